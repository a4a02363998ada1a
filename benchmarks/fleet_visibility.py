"""Cross-replica visibility of a fleet on Redis Streams: an event acknowledged by replica A ->
visible in replica B's Recommend, on loopback.

    .venv/bin/python benchmarks/fleet_visibility.py --bundles BUNDLES [--samples 500] [--background 0]

Starts its own redis-server (a temporary folder, ``appendonly yes``, ``appendfsync always``, a free
loopback port; or ``--redis-url`` for one that runs), two ``tandem serve --event-bus`` processes A
and B on the bundle root, and, for the baseline in the same run, one ``tandem serve`` on its own
SQLite event log. Each sample records one event of a new user on A (RecordEvents, unary) and then
asks B for that user's recommendations back to back until the answer is no longer a cold start:
visibility is the time from A's acknowledgement to the first such answer of B (so it includes at
least one Recommend; the table gives Recommend's own latency). Every other sample instead polls
B's GetStatus (no compute slot, about a millisecond) until B's position reaches the one A
acknowledged: the time until B has applied the event. ``--background N`` adds N
threads writing batches of 10 events to A and B throughout (the follower then has work to do).

Prints p50 / p95 / p99 / max of: visibility on B; RecordEvents on A (acknowledged after the
stream append, fsync always) and on the SQLite server (acknowledged after its commit,
synchronous=FULL); Recommend on B; and the mean of B's own ``tandem_event_bus_visibility_seconds``
(entry appended on A -> applied on B, both clocks of this machine), and, as the floor measured
meanwhile, a Redis PING round trip every 5 ms from the benchmark process (with ``appendfsync
always`` Redis answers every client after the fsync of the writes it has just run, so under a
write load each round trip to Redis waits for the disk). ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server; or `make redis`)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=open(folder / "redis.log", "w"), stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    raise SystemExit(f"redis-server did not start: see {folder / 'redis.log'}")


class _Server:
    def __init__(self, bundles: Path, log: Path, *extra: str) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(bundles),
                                      "--port", str(self.port), "--metrics-port", str(self.metrics_port), *extra],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.TandemStub(self.channel)
        self.admin = pb_grpc.TandemAdminStub(self.channel)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"a server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                self.stub.Ping(pb.PingRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.2)
        raise SystemExit(f"a server was not ready within {timeout}s: see {self.log.name}")

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else float("nan")

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _stats(values: list[float]) -> dict:
    a = np.asarray(values) * 1e3
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def measure(bundles: Path, samples: int, background: int, redis_url: str | None, work: Path) -> dict:
    redis_proc = None
    if redis_url is None:
        redis_proc, redis_url = _start_redis(work)
    stream = f"bench:events:{int(time.time())}"
    bus = ("--event-bus", redis_url, "--event-stream", stream)
    a = _Server(bundles, work / "a.log", *bus)
    b = _Server(bundles, work / "b.log", *bus)
    solo = _Server(bundles, work / "solo.log", "--event-log", str(work / "solo-events.sqlite3"))
    stop = threading.Event()
    try:
        for s in (a, b, solo):
            s.wait_ready()
        items = [it.item_id for it in a.stub.Recommend(pb.RecommendRequest(k=50), timeout=10).items]
        rng = random.Random(0)

        def load(n: int) -> None:
            r = random.Random(n)
            target = (a, b)[n % 2]
            k = 0
            while not stop.is_set():
                events = [pb.Event(user_id=f"bg-{n}-{r.randrange(500)}", item_id=r.choice(items)) for _ in range(10)]
                try:
                    target.stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=10)
                except grpc.RpcError:
                    pass
                k += 1
                time.sleep(0.01)

        pings: list[float] = []

        def ping() -> None:  # the floor: one Redis round trip from a third process, meanwhile
            import redis

            client = redis.Redis.from_url(redis_url)
            while not stop.is_set():
                t = time.perf_counter()
                client.ping()
                pings.append(time.perf_counter() - t)
                time.sleep(0.005)
            client.close()

        threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(background)]
        threads.append(threading.Thread(target=ping, daemon=True))
        for t in threads:
            t.start()
        run = int(time.time())
        visible, applied, record_bus, record_solo, recommend_b, polls = [], [], [], [], [], []
        for n in range(2 * samples + 20):  # the first 20: warm-up, not recorded
            user, item = f"vis-{run}-{n}", rng.choice(items)
            t0 = time.perf_counter()
            ack = a.stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item)]),
                                      timeout=10)
            acked = time.perf_counter()
            if n % 2:  # every other sample: when B has applied it (B's position, GetStatus: no compute)
                while b.admin.GetStatus(pb.GetStatusRequest(), timeout=10).event_log_sequence < ack.last_sequence:
                    if time.perf_counter() - acked > 10:
                        raise SystemExit(f"B did not apply {user}'s event within 10 s")
                if n >= 20:
                    applied.append(time.perf_counter() - acked)
                continue
            k = 0
            while True:
                r0 = time.perf_counter()
                resp = b.stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
                r1 = time.perf_counter()
                k += 1
                if not resp.cold_start:
                    break
                if r1 - acked > 10:
                    raise SystemExit(f"B did not see {user}'s event within 10 s")
            s0 = time.perf_counter()
            solo.stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item)]), timeout=10)
            s1 = time.perf_counter()
            if n >= 20:
                visible.append(r1 - acked)
                record_bus.append(acked - t0)
                record_solo.append(s1 - s0)
                recommend_b.append(r1 - r0)
                polls.append(k)
            time.sleep(rng.uniform(0.0, 0.02))
        stop.set()
        for t in threads:
            t.join(15)
        total = b.metric("tandem_event_bus_visibility_seconds_sum")
        count = b.metric("tandem_event_bus_visibility_seconds_count")
        return {"samples": samples, "background_writers": background,
                "visibility_on_b": _stats(visible), "applied_on_b": _stats(applied), "record_on_a_bus": _stats(record_bus),
                "record_sqlite": _stats(record_solo), "recommend_on_b": _stats(recommend_b),
                "redis_ping": _stats(pings[50:]),
                "polls_mean": float(np.mean(polls)), "polls_max": int(max(polls)),
                "b_follower_visibility_mean_ms": 1e3 * total / count if count else float("nan"),
                "b_entries_applied": count}
    finally:
        stop.set()
        for s in (a, b, solo):
            s.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=Path, required=True, help="a bundle root (tandem build --out)")
    p.add_argument("--samples", type=int, default=500, help="events measured (default 500)")
    p.add_argument("--background", type=int, default=0, help="writer threads loading A and B meanwhile (default 0)")
    p.add_argument("--redis-url", help="a running Redis 7+ (default: start one in a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-vis-") as tmp:
        out = measure(args.bundles, args.samples, args.background, args.redis_url, Path(tmp))
    print(f"{out['samples']} events, {out['background_writers']} background writers; B polled "
          f"{out['polls_mean']:.2f} Recommends per event on average (max {out['polls_max']})")
    print("| measurement | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for key, label in (("visibility_on_b", "acknowledged on A -> visible in B's Recommend"),
                       ("applied_on_b", "acknowledged on A -> applied on B (GetStatus position)"),
                       ("record_on_a_bus", "RecordEvents on A (bus, fsync always)"),
                       ("record_sqlite", "RecordEvents, SQLite server (baseline)"),
                       ("recommend_on_b", "Recommend on B (one poll)"),
                       ("redis_ping", "Redis PING from the benchmark (floor)")):
        s = out[key]
        print(f"| {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |")
    print(f"B's follower: entry appended on A -> applied on B, mean {out['b_follower_visibility_mean_ms']:.2f} ms "
          f"over {out['b_entries_applied']:.0f} entries")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
