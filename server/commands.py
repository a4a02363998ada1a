"""``tandem serve`` and the CLI client: ``search``, ``recommend``, ``similar``, ``record``, ``status``.

An RPC error exits with status 1 and prints ``CODE: message`` (e.g.
``INVALID_ARGUMENT: k must be between 1 and 1000``) on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register", "serve"]


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="serve a bundle over gRPC (health, reflection, metrics)",
                              description="Serve the bundle BUNDLES/CURRENT names; hot-swaps when CURRENT changes.")
    s.add_argument("--bundles", type=Path, required=True, metavar="DIR")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--event-log", type=Path, help="SQLite event log (default BUNDLES/events.sqlite3)")
    s.add_argument("--token", help="bearer token required by RecordEvents/StreamEvents and the admin service "
                   "(default: $TANDEM_TOKEN)")
    s.add_argument("--tls-cert", type=Path)
    s.add_argument("--tls-key", type=Path)
    s.add_argument("--workers", type=int, help="request threads (default 4 per core, at least 4)")
    s.add_argument("--compute-slots", type=int,
                   help="Search/Recommend/SimilarItems calls computed at once; the rest queue (default: one per core)")
    s.add_argument("--user-memos", type=int, metavar="N",
                   help="users whose vector and history summary are kept between requests, the most recently "
                   "active computed at load; about 10 KB each (default 50000; 0: none)")
    s.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take to finish (default 10)")
    s.set_defaults(handler=serve)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_)
        p.add_argument("--addr", default="127.0.0.1:50051", metavar="HOST:PORT")
        p.add_argument("--token", help="bearer token (default: $TANDEM_TOKEN)")
        p.add_argument("--tls-ca", type=Path, metavar="PEM",
                       help="connect with TLS, trusting this CA (the server's --tls-cert when self-signed)")
        p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
        return p

    p = client("search", "search the catalog through a running server")
    p.add_argument("--query", required=True)
    p.add_argument("--user")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--explain", action="store_true")
    p.set_defaults(handler=_search)
    p = client("recommend", "recommendations for a user through a running server")
    p.add_argument("--user", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--explain", action="store_true")
    p.set_defaults(handler=_recommend)
    p = client("similar", "items similar to an item through a running server")
    p.add_argument("--item", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--explain", action="store_true")
    p.set_defaults(handler=_similar)
    p = client("record", "record one event through a running server")
    p.add_argument("--user", required=True)
    p.add_argument("--item", required=True)
    p.add_argument("--event", default="purchase")
    p.add_argument("--ts", type=int, default=0, help="epoch seconds (default: now)")
    p.set_defaults(handler=_record)
    p = client("status", "a running server's bundle, counts, uptime and event-log position")
    p.set_defaults(handler=_status)


def serve(args: argparse.Namespace, engine_loader: Callable[[Path], Any] | None = None) -> int:
    """``tandem serve``: the bundle's pipeline (``engine_loader(bundle_folder)`` when given, as
    the process tests pass a stand-in engine) behind the gRPC server, until SIGTERM or SIGINT."""
    from server.logs import use_json_logs
    from server.service import ServerConfig, TandemServer

    use_json_logs(logging.DEBUG if args.verbose else logging.INFO)
    import torch

    # request-time work is small: intra-op threads (torch, OpenBLAS, FAISS's OpenMP) only add
    # hand-offs and spin-waits; concurrency comes from the request thread pool
    # (see benchmarks/serve_latency.py)
    torch.set_num_threads(1)
    import faiss  # noqa: F401 - loaded now so that its OpenMP runtime is limited too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    kwargs = {} if args.workers is None else {"workers": args.workers}
    if args.compute_slots is not None:
        kwargs["compute_slots"] = args.compute_slots
    if args.user_memos is not None:
        kwargs["user_memos"] = args.user_memos
    config = ServerConfig(bundles=args.bundles, host=args.host, port=args.port, metrics_port=args.metrics_port,
                          event_log=args.event_log, token=args.token or os.environ.get("TANDEM_TOKEN") or None,
                          tls_cert=args.tls_cert, tls_key=args.tls_key, grace_s=args.grace, **kwargs)
    if engine_loader is None:
        from ranking.loader import load_engine as engine_loader
    server = TandemServer(config, engine_loader)
    done = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        port = server.start()
    except RuntimeError as exc:
        print(f"tandem serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"tandem serving {server.manager.engine.version} on {args.host}:{port}"
          + (f", metrics on {args.host}:{server.metrics_port}" if server.metrics_port is not None else ""),
          flush=True)
    done.wait()
    server.stop()  # drains in-flight requests, then closes the event log
    return 0


def _call(args: argparse.Namespace, method: str, request):
    import grpc

    from server._generated import tandem_pb2_grpc as pb_grpc

    token = args.token or os.environ.get("TANDEM_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else None
    if args.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes())
        channel = grpc.secure_channel(args.addr, creds)
    else:
        channel = grpc.insecure_channel(args.addr)
    with channel:
        stub = pb_grpc.TandemStub(channel) if method != "GetStatus" else pb_grpc.TandemAdminStub(channel)
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            raise SystemExit(1) from None


def _items(args: argparse.Namespace, resp) -> int:
    from google.protobuf.json_format import MessageToDict

    if args.json:
        out = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for it in out.get("items", []):
            it.setdefault("score", 0.0)
        print(json.dumps(out))
        return 0
    print(f"bundle {resp.bundle_version}{' (cold start)' if resp.cold_start else ''}")
    for rank, it in enumerate(resp.items, 1):
        print(f"{rank:>3}. {it.item_id:<20} {it.score:>9.4f}  {it.title[:70]}")
        if it.HasField("explanation"):
            e = it.explanation
            src = ", ".join(f"{h.source}#{h.rank}" for h in e.sources)
            feats = ", ".join(f"{f.name}+{f.value:.2f}" for f in e.top_features)
            print(f"       found by {src}; fused {e.fused_score:.4f}" + (f"; up by {feats}" if feats else ""))
    return 0


def _search(args):
    from server._generated import tandem_pb2 as pb

    return _items(args, _call(args, "Search", pb.SearchRequest(query=args.query, user_id=args.user or "", k=args.k,
                                                                explain=args.explain)))


def _recommend(args):
    from server._generated import tandem_pb2 as pb

    return _items(args, _call(args, "Recommend", pb.RecommendRequest(user_id=args.user, k=args.k,
                                                                      explain=args.explain)))


def _similar(args):
    from server._generated import tandem_pb2 as pb

    return _items(args, _call(args, "SimilarItems", pb.SimilarItemsRequest(item_id=args.item, k=args.k,
                                                                            explain=args.explain)))


def _record(args):
    from server._generated import tandem_pb2 as pb

    resp = _call(args, "RecordEvents", pb.RecordEventsRequest(events=[
        pb.Event(user_id=args.user, item_id=args.item, event=args.event, ts=args.ts)]))
    if args.json:
        print(json.dumps({"accepted": resp.accepted, "applied": resp.applied, "last_sequence": resp.last_sequence}))
    else:
        print(f"recorded {resp.accepted} event(s), {resp.applied} applied, log position {resp.last_sequence}")
    return 0


def _status(args):
    from google.protobuf.json_format import MessageToDict

    from server._generated import tandem_pb2 as pb

    resp = _call(args, "GetStatus", pb.GetStatusRequest())
    out = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    out = {k: getattr(resp, k) if isinstance(getattr(resp, k), int) else v for k, v in out.items()}  # 64-bit ints
    if args.json:
        print(json.dumps(out))
        return 0
    width = max(len(k) for k in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value if value != '' else '-'}")
    return 0
