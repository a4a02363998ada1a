"""Serving latency: closed-loop gRPC clients against `tandem serve`, with the floor measured in
the same run (an echo RPC through the same server, and a bare FAISS search of the bundle's
two-tower index in-process).

    .venv/bin/python benchmarks/serve_latency.py --bundles BUNDLES --data DATA [--seconds 10]
    .venv/bin/python benchmarks/serve_latency.py --items 100000 --users 60000 --work /tmp/bench
    .venv/bin/python benchmarks/serve_latency.py ... --json latency.json   # then: tandem report --latency latency.json

With ``--items``, a synthetic shop of that size is generated and built first (split none).
Prints p50 / p95 / p99 latency and throughput per RPC and concurrency (1, 4, 16), the error count,
and the ratio of Recommend p99 at concurrency 1 to the floor (echo p99 + bare FAISS p99).
With ``--repeats N`` the three concurrency-1 measurements behind that ratio are taken N more
times, interleaved, and the ratio's median and range are printed: on a shared 2-core machine one
5-second p99 moves by +-20% from run to run.

Every measurement starts with ``--warmup`` seconds (default 0.5) of the same call at the same
concurrency, not recorded: each measurement opens new channels, and on this machine the first
requests after a few idle seconds run several times slower (benchmarks/README.md has the
numbers). ``--warmup 0`` measures from the first call.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tandem.index_builder.report_inputs import LATENCY_FORMAT, latency_record

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_loop(make_call, concurrency: int, seconds: float, warmup: float = 0.0, max_requests: int = 200_000,
                 name: str = "call"):
    """``concurrency`` threads, each calling back to back: first for ``warmup`` seconds,
    unrecorded (a new channel connects, and the server's path warms up after whatever ran
    before), then ``seconds`` recorded."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + warmup
    deadline = start + seconds
    finished: list[float] = []

    def worker(i: int) -> None:
        call = make_call(i)
        n = 0
        while time.perf_counter() < start:
            try:
                call(n)
            except Exception:  # noqa: BLE001 - warm-up failures count as errors too
                with lock:
                    errors[0] += 1
            n += 1
        local = []
        while time.perf_counter() < deadline and len(local) < max_requests // concurrency:
            t0 = time.perf_counter()
            try:
                call(n)
                local.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
            n += 1
        with lock:
            lat.extend(local)
            finished.append(time.perf_counter())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(finished) - start
    return latency_record(name, concurrency, np.array(lat) * 1e3, wall, errors[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--items", type=int)
    ap.add_argument("--users", type=int)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tandem_bench"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=0, help="extra interleaved measurements of the c=1 ratio")
    ap.add_argument("--workers", type=int, help="passed to tandem serve (default: its own)")
    ap.add_argument("--json", type=Path, metavar="FILE",
                    help="also write every measurement (percentiles, histogram) here, for `tandem report --latency`")
    ap.add_argument("--warmup", type=float, default=0.5,
                    help="unrecorded seconds before each measurement, same call and concurrency (default 0.5)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.items:
        args.data = args.work / "shop"
        args.bundles = args.work / "bundles"
        if not (args.bundles / "CURRENT").exists():
            subprocess.run([sys.executable, "-m", "tandem.server.cli", "generate", "--out", str(args.data), "--items",
                            str(args.items), "--users", str(args.users or args.items // 2)], check=True, cwd=ROOT)
            subprocess.run([sys.executable, "-m", "tandem.server.cli", "build", "--data", str(args.data), "--out",
                            str(args.bundles)], check=True, cwd=ROOT)
    if args.bundles is None or args.data is None:
        ap.error("give --bundles and --data, or --items to generate and build a synthetic bundle")

    import grpc

    from tandem.ranking.loader import load_engine
    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    with gzip.open(next(args.data.glob("events.*")), "rt") as f:
        users = list({json.loads(next(f))["user_id"] for _ in range(2000)})
    queries = []
    qfile = next(args.data.glob("queries.*"), None)
    if qfile is not None:
        with gzip.open(qfile, "rt") as f:
            queries = list({json.loads(line)["query"] for line in f})[:500]
    queries = queries or ["gift", "blue", "best value", "new"]

    # the in-process floor: one bare FAISS search of the two-tower index per request
    engine = load_engine(args.bundles)
    tt = engine.sources["two_tower"]
    index = tt._index  # noqa: SLF001 - the benchmark measures the raw index on purpose
    qv = np.ascontiguousarray(tt.encode_items()[:256])

    port = _free_port()
    log = open(args.work / "bench_server.log", "w") if args.work.exists() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(args.bundles),
                             "--port", str(port), "--event-log", str(args.work / "bench_events.sqlite3"),
                             *([] if args.workers is None else ["--workers", str(args.workers)])],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"
    try:
        ch = grpc.insecure_channel(addr)
        grpc.channel_ready_future(ch).result(timeout=300)
        stub = pb_grpc.TandemStub(ch)
        while True:
            try:
                stub.Ping(pb.PingRequest(), timeout=5)
                break
            except grpc.RpcError:
                time.sleep(0.5)
        for _ in range(50):  # warm up
            stub.Recommend(pb.RecommendRequest(user_id=users[0], k=10))
            stub.Search(pb.SearchRequest(query=queries[0], k=10))

        def rpc(kind):
            def make(i):
                s = pb_grpc.TandemStub(grpc.insecure_channel(addr))
                if kind == "Recommend":
                    return lambda n: s.Recommend(pb.RecommendRequest(user_id=users[(i * 7919 + n) % len(users)],
                                                                     k=10), timeout=10)
                if kind == "Search":
                    return lambda n: s.Search(pb.SearchRequest(query=queries[(i * 31 + n) % len(queries)], k=10),
                                              timeout=10)
                return lambda n: s.Ping(pb.PingRequest(payload=b"x" * 64), timeout=10)
            return make

        def faiss_make(i):
            return lambda n: index.search(qv[(i + n) % len(qv)][None, :], 200)

        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            for name, make in (("Ping (echo floor)", rpc("Ping")), ("bare FAISS search", faiss_make),
                               ("Recommend", rpc("Recommend")), ("Search", rpc("Search"))):
                r = _closed_loop(make, c, args.seconds, args.warmup, name=name)
                rows.append((name, c, r))
                print(f"{name:<18} c={c:<3} p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f}  p99 {r['p99']:.2f}  "
                      f"{r['rps']:.0f} req/s  errors {r['errors']}", flush=True)
        print(f"\nbundle {engine.version}: {engine.n_items} items, {engine.n_users} users; {os.cpu_count()} cores")
        print("| RPC | concurrency | p50 ms | p95 ms | p99 ms | req/s | errors |\n|---|---|---|---|---|---|---|")
        for name, c, r in rows:
            print(f"| {name} | {c} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | {r['errors']} |")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "format": LATENCY_FORMAT, "bundle": engine.version, "items": engine.n_items, "users": engine.n_users,
                "cores": os.cpu_count(), "seconds": args.seconds, "warmup": args.warmup,
                "results": [r for _, _, r in rows]}, indent=1) + "\n")
            print(f"measurements written to {args.json}")
        rec1 = next(r for n, c, r in rows if n == "Recommend" and c == 1)
        echo1 = next(r for n, c, r in rows if n.startswith("Ping") and c == 1)
        faiss1 = next(r for n, c, r in rows if n.startswith("bare") and c == 1)
        floor = echo1["p99"] + faiss1["p99"]
        print(f"\nRecommend p99 at concurrency 1: {rec1['p99']:.2f} ms = {rec1['p99'] / floor:.1f}x the floor "
              f"(echo p99 + bare FAISS p99 = {floor:.2f} ms)")
        if args.repeats > 0:
            ratios = [rec1["p99"] / floor]
            for _ in range(args.repeats):
                e, f, r = (_closed_loop(make, 1, args.seconds, args.warmup)["p99"]
                           for make in (rpc("Ping"), faiss_make, rpc("Recommend")))
                ratios.append(r / (e + f))
                print(f"repeat: echo p99 {e:.2f} + FAISS p99 {f:.2f}; Recommend p99 {r:.2f} ms = "
                      f"{ratios[-1]:.1f}x", flush=True)
            print(f"ratio over {len(ratios)} measurements: median {np.median(ratios):.2f}x, "
                  f"range {min(ratios):.2f}x - {max(ratios):.2f}x")
        ch.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
