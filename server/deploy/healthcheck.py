"""The image's HEALTHCHECK: ask the standard gRPC health service (``grpc.health.v1.Health``).

``python healthcheck.py [ADDR] [SERVICE]`` prints ``ADDR: STATUS`` and exits 0 only when the status
is ``SERVING`` (``tandem serve`` reports it once the bundle is loaded and the port bound, and
``NOT_SERVING`` while it drains). ADDR defaults to ``127.0.0.1:$PORT`` (50051), SERVICE to
``""`` (the whole server). Plaintext only: with ``--tls-cert`` give the image a HEALTHCHECK of your own.
Only grpc is imported, not Tandem: the check runs every few seconds and must start fast.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    addr = argv[1] if len(argv) > 1 else f"127.0.0.1:{os.environ.get('PORT', '50051')}"
    service = argv[2] if len(argv) > 2 else ""
    try:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=3.0)
    except grpc.RpcError as exc:
        print(f"{addr}: {exc.code().name}: {exc.details()}")
        return 1
    print(f"{addr}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
