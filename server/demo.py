"""``make demo``: the whole job on the embedded default (the synthetic shop), end to end.

generate -> clean (report) -> popularity baseline -> build a bundle (with evaluation) ->
serve -> search, recommend, record a purchase, recommend again -> stop the server.
Every step runs the real ``tandem`` command, so what the demo shows is what users get.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _tandem(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "server.cli", *args]
    print(f"\n$ tandem {' '.join(args)}", flush=True)
    if capture:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out.stdout
    subprocess.run(cmd, check=True)
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_serving(addr: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"the server at {addr} did not report SERVING within {timeout:.0f}s")


def _titles(result: dict) -> list[str]:
    return [f"{it['item_id']} {it.get('title', '')[:50]} ({it['score']:.3f})" for it in result["items"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # keep the demo to a few minutes on a laptop: the two-tower model stops after 2 minutes of
    # training (early stopping usually ends it sooner); a real build has no such budget
    os.environ.setdefault("TANDEM_BUILD__TWO_TOWER__TIME_BUDGET_S", "120")
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    data, bundles = out / "shop", out / "bundles"
    t0 = time.perf_counter()

    _tandem("generate", "--out", str(data), "--items", str(args.items), "--users", str(args.users),
            "--seed", str(args.seed))
    _tandem("clean", "--data", str(data), "--report", str(out / "cleaning_report.json"))
    _tandem("eval", "--data", str(data), "--json", str(out / "popularity.json"))
    _tandem("build", "--data", str(data), "--out", str(bundles), "--split", "leave-last-out")

    port = _free_port()
    addr = f"127.0.0.1:{port}"
    log = open(out / "server.log", "w")
    print(f"\n$ tandem serve --bundles {bundles} --port {port}  (logs in {out / 'server.log'})", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--bundles", str(bundles),
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_serving(addr, server)
        events = (data / "events.jsonl.gz")
        import gzip

        with gzip.open(events, "rt") as f:
            user = json.loads(f.readline())["user_id"]
        queries = data / "queries.jsonl.gz"
        with gzip.open(queries, "rt") as f:
            query = json.loads(f.readline())["query"]

        found = json.loads(_tandem("search", "--addr", addr, "--query", query, "--k", "5", "--json", capture=True))
        print(f"search {query!r}:\n  " + "\n  ".join(_titles(found)))
        before = json.loads(_tandem("recommend", "--addr", addr, "--user", user, "--k", "5", "--json",
                                    capture=True))
        print(f"recommend for {user}:\n  " + "\n  ".join(_titles(before)))
        bought = before["items"][0]["item_id"]
        _tandem("record", "--addr", addr, "--user", user, "--item", bought, "--event", "purchase")
        after = json.loads(_tandem("recommend", "--addr", addr, "--user", user, "--k", "5", "--json",
                                   capture=True))
        print(f"recommend for {user} after buying {bought}:\n  " + "\n  ".join(_titles(after)))
        changed = [i["item_id"] for i in before["items"]] != [i["item_id"] for i in after["items"]]
        print(f"\nthe purchase {'changed' if changed else 'did NOT change'} the next recommendation; "
              f"{bought} is {'no longer' if bought not in [i['item_id'] for i in after['items']] else 'still'} "
              "recommended")
        if not changed:
            return 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; everything is under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
