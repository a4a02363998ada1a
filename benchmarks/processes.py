"""`tandem serve --processes N`: Recommend throughput at concurrency 16 for 1 and 2 processes,
and the cross-process visibility delay (an event acknowledged by one process -> the other
process's Recommend shows it), in one run.

    .venv/bin/python benchmarks/processes.py --bundles BUNDLES --data SHOP [--seconds 10] [--rounds 2]

Throughput: each configuration is started as the product runs it (``tandem serve --processes N``,
N = 1 and 2, alternated ``--rounds`` times so that a change in the machine's load hits both),
then 16 closed-loop client threads (in ``--client-procs`` processes, default 2: one Python client
process is GIL-bound too) call Recommend for the shop's users for ``--seconds``, each thread on its own channel (one channel is one connection, and SO_REUSEPORT spreads connections,
not requests, over the processes). Extra server flags go after ``--`` (e.g. ``-- --compute-slots 1``).

Visibility (:func:`visibility`): on the 2-process group, for ``--trials`` new users, record one
event through one process's private port, then call Recommend on the other process's private
port back to back until the answer stops being a cold start; the delay is from the acknowledgement
to the end of that first changed answer. The same loop on the process that recorded the event
(where the event is applied before the acknowledgement) is the floor of this method: one
Recommend's latency. benchmarks/freshness_processes.py prints the visibility part alone.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^tandem process (\d+) ready: pid (\d+), private port (\d+)", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``tandem serve --processes N`` on a free port until :meth:`stop`; ``private`` lists each
    process's private port (for N = 1, the port itself)."""

    def __init__(self, bundles: Path, work: Path, processes: int, extra: list[str]) -> None:
        import grpc

        self.port = _free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = work / f"server-{processes}p-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(bundles), "--port", str(self.port),
             "--event-log", str(work / "bench_events.sqlite3"), "--processes", str(processes), *extra],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tandem serve exited with {self.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tandem serve not SERVING in 600 s; see {self.log_path}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        found = {int(i): int(p) for i, _, p in READY.findall(self.log_path.read_text())}
        self.private = [found[i] for i in sorted(found)] if processes > 1 else [self.port]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _users(data: Path, n: int = 2000) -> list[str]:
    with gzip.open(next(data.glob("events.*")), "rt") as f:
        return sorted({json.loads(line)["user_id"] for line in itertools.islice(f, 20 * n)})[:n]


def throughput(port: int, users: list[str], concurrency: int, seconds: float, client_procs: int = 2,
               warmup: float = 1.0) -> dict:
    """Closed loop: ``concurrency`` threads spread over ``client_procs`` client processes (one
    Python client process is itself GIL-bound), each thread on its own channel, Recommend back to back."""
    start = time.time() + 3.0 + warmup  # wall clock: the client processes start measuring together
    per = [concurrency // client_procs + (k < concurrency % client_procs) for k in range(client_procs)]
    with multiprocessing.get_context("spawn").Pool(client_procs) as pool:
        parts = pool.starmap(_client, [(port, users, c, sum(per[:k]), start, seconds) for k, c in enumerate(per)])
    ms = np.array([x for lat, _ in parts for x in lat]) * 1e3
    return {"requests": len(ms), "rps": len(ms) / seconds, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": sum(e for _, e in parts)}


def _client(port: int, users: list[str], concurrency: int, first: int, start_wall: float,
            seconds: float) -> tuple[list[float], int]:
    """One client process: threads ``first``.. call until ``start_wall + seconds``, recording from ``start_wall``."""
    import grpc

    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + (start_wall - time.time())
    deadline = start + seconds

    def worker(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.TandemStub(ch)
            n, local = 0, []
            while (now := time.perf_counter()) < deadline:
                try:
                    stub.Recommend(pb.RecommendRequest(user_id=users[(i * 7919 + n) % len(users)], k=10), timeout=10)
                    if now >= start:
                        local.append(time.perf_counter() - now)
                except grpc.RpcError:
                    with lock:
                        errors[0] += 1
                n += 1
            with lock:
                lat.extend(local)

    threads = [threading.Thread(target=worker, args=(first + i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0]


def visibility(ports: list[int], item: str, trials: int, tag: str = "vis") -> dict[str, list[float]]:
    """Delays (seconds) from RecordEvents' acknowledgement on ``ports[a]`` to the first Recommend
    on ``ports[b]`` that shows it: ``cross`` for a != b (alternating direction), ``same`` for a == b."""
    import grpc

    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    stubs = [pb_grpc.TandemStub(ch) for ch in channels]
    out: dict[str, list[float]] = {"cross": [], "same": []}
    stamp = int(time.time())
    try:
        for s in stubs:  # connect and warm each path
            for _ in range(20):
                s.Recommend(pb.RecommendRequest(user_id=f"{tag}-warm", k=10), timeout=10)
        for k in range(trials):
            for kind in ("cross", "same"):
                a = k % len(stubs)
                b = (a + 1) % len(stubs) if kind == "cross" else a
                user = f"{tag}-{stamp}-{kind}-{k}"
                stubs[a].RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item)]),
                                      timeout=10)
                t0 = time.perf_counter()
                while stubs[b].Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10).cold_start:
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError(f"the event of {user} was not visible on port {ports[b]} within 10 s")
                out[kind].append(time.perf_counter() - t0)
    finally:
        for ch in channels:
            ch.close()
    return out


def catalog_item(port: int) -> str:
    import grpc

    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return pb_grpc.TandemStub(ch).Recommend(pb.RecommendRequest(k=1), timeout=30).items[0].item_id


def _pct(values: list[float]) -> str:
    ms = np.array(values) * 1e3
    return (f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms "
            f"({len(ms)} events)")


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the shop the bundle was built from (its users)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tandem_processes_bench"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="1- and 2-process measurements, alternated (default 2)")
    ap.add_argument("--trials", type=int, default=200, help="visibility: events per kind (default 200)")
    ap.add_argument("--client-procs", type=int, default=2, help="client processes sharing the concurrency (default 2)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ours, extra = _split(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(ours)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    users = _users(args.data)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; server flags {extra or 'none'}",
          flush=True)
    results: dict[int, list[dict]] = {1: [], 2: []}
    vis = None
    for r in range(args.rounds):
        for n in (1, 2):
            served = Served(args.bundles, args.work, n, extra)
            try:
                res = throughput(served.port, users, args.concurrency, args.seconds, args.client_procs)
                results[n].append(res)
                print(f"round {r + 1}: {n} process(es), c={args.concurrency}: {res['rps']:.0f} req/s, "
                      f"p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, errors {res['errors']}; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
                if n == 2 and vis is None and args.trials > 0:
                    vis = visibility(served.private, catalog_item(served.port), args.trials)
            finally:
                served.stop()
    print(f"\n| processes | Recommend req/s at c={args.concurrency} (per round) | median | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for n in (1, 2):
        rps = [x["rps"] for x in results[n]]
        print(f"| {n} | {', '.join(f'{v:.0f}' for v in rps)} | {np.median(rps):.0f} | "
              f"{np.median([x['p50'] for x in results[n]]):.1f} | {np.median([x['p99'] for x in results[n]]):.1f} |")
    ratio = np.median([x["rps"] for x in results[2]]) / np.median([x["rps"] for x in results[1]])
    print(f"2 processes / 1 process: {ratio:.2f}x")
    if vis is not None:
        print(f"visibility, recorded on one process, Recommend on the other: {_pct(vis['cross'])}")
        print(f"floor, recorded and read on the same process:               {_pct(vis['same'])}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
