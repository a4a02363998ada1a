"""Search latency on queries the server has never seen, against a floor measured in the same run.

    .venv/bin/python benchmarks/search_latency.py --bundles BUNDLES --data DATA [--seconds 5] [--repeats 3]

``tandem serve`` runs as a subprocess on 127.0.0.1; closed-loop Python gRPC clients send
``Search`` requests (k = 10), each with a query no earlier request of the run used: the queries
are the evaluation half of ``DATA/queries.*`` (normalised text whose sha1 is even, the protocol of
``../shared/tools/searcheval.py``), deduplicated and shuffled with a fixed seed, handed out once
each across all threads and all measurements. So every request encodes its query with the text
model; none is answered from the query cache. When the queries run out a window ends early and
says how many requests it measured.

The floor, per request, is what any server built on these pieces must spend:

- the echo: ``Ping`` through the same server (transport, validation, metrics, logging);
- one bare sentence-transformers encode of one query (``SentenceTransformer.encode``, the
  bundle's text model, in this process, one thread, unique queries of the training half);
- one bare FAISS search of the bundle's text index with that vector (k = 200).

It prints p50 / p95 / p99 and throughput of Search at each concurrency (default 1, 4, 16) and the
ratio of Search p99 at concurrency 1 to the floor (echo p99 + encode p99 + FAISS p99); with
``--repeats N``, N more interleaved measurements of the three floor parts and Search at
concurrency 1, and the ratio's median and range. Works on search-only bundles.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_latency import _closed_loop, _free_port  # noqa: E402


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def in_eval_half(text: str) -> bool:
    """The protocol's evaluation half: sha1 of the normalised text is even."""
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % 2 == 0


def query_halves(data: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """(evaluation half, training half) of the distinct normalised queries, each shuffled."""
    qfile = next(data.glob("queries.*"), None)
    if qfile is None:
        raise SystemExit(f"{data} has no queries.* file: this benchmark needs real query texts")
    opener = gzip.open if qfile.suffix == ".gz" else open
    with opener(qfile, "rt") as f:
        texts = sorted({normalise(json.loads(line)["query"]) for line in f if line.strip()})
    rng = np.random.default_rng(seed)
    evaluation = [t for t in texts if in_eval_half(t)]
    training = [t for t in texts if not in_eval_half(t)]
    rng.shuffle(evaluation)
    rng.shuffle(training)
    return evaluation, training


class Once:
    """Hands out each item of ``items`` once, to any thread; None when they have run out."""

    def __init__(self, items: list[str]) -> None:
        self._items = items
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> str | None:
        with self._lock:
            if self._next >= len(self._items):
                return None
            self._next += 1
            return self._items[self._next - 1]

    @property
    def used(self) -> int:
        return self._next


class _OutOfQueries(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", type=Path, required=True, help="bundle root that tandem serve serves")
    ap.add_argument("--data", type=Path, required=True, help="data folder with queries.* (the query texts)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tandem_search_bench"),
                    help="server log and event log go here (default: /tmp/tandem_search_bench)")
    ap.add_argument("--seconds", type=float, default=5.0, help="recorded seconds per measurement (default 5)")
    ap.add_argument("--concurrency", default="1,4,16", help="client threads per measurement (default 1,4,16)")
    ap.add_argument("--repeats", type=int, default=0, help="extra interleaved measurements of the c=1 ratio")
    ap.add_argument("--warmup", type=float, default=0.5,
                    help="unrecorded seconds before each measurement (default 0.5; these use up queries too)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)

    import grpc
    import torch

    from tandem.ranking.loader import load_engine
    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    evaluation, training = query_halves(args.data)
    served = Once(evaluation)
    print(f"{len(evaluation)} distinct evaluation-half queries for Search, {len(training)} training-half "
          f"queries for the bare encoder", flush=True)

    # the in-process floor parts: the bundle's own text model and text index
    torch.set_num_threads(1)
    engine = load_engine(args.bundles)
    text = engine.sources["text"]
    model = text.encoder._load()  # noqa: SLF001 - the bare SentenceTransformer, on purpose
    if text.encoder.config.backend != "torch":  # the floor stays one bare sentence-transformers encode
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(text.encoder.config.resolved_path()), device="cpu")
        model.max_seq_length = text.encoder.config.max_seq_length
    index = text._index  # noqa: SLF001 - the raw FAISS index, on purpose
    bare_queries = Once(training)

    def encode_make(i):
        def call(n):
            q = bare_queries.take() or training[n % len(training)]
            return model.encode([q], batch_size=1, convert_to_numpy=True, normalize_embeddings=True)
        return call

    vectors = model.encode(training[:256], batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def faiss_make(i):
        return lambda n: index.search(vectors[(i + n) % len(vectors)][None, :], 200)

    port = _free_port()
    log = open(args.work / "bench_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(args.bundles),
                             "--port", str(port), "--event-log", str(args.work / "bench_events.sqlite3")],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"
    try:
        ch = grpc.insecure_channel(addr)
        grpc.channel_ready_future(ch).result(timeout=600)
        stub = pb_grpc.TandemStub(ch)
        deadline = time.monotonic() + 600
        while True:  # ready: the server warms every request path before it answers Ping
            try:
                stub.Ping(pb.PingRequest(), timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"tandem serve did not come up; see {args.work / 'bench_server.log'}") from None
                time.sleep(0.5)

        def search_make(i):
            s = pb_grpc.TandemStub(grpc.insecure_channel(addr))

            def call(n):
                q = served.take()
                if q is None:
                    time.sleep(0.05)  # not a busy loop for the rest of the window
                    raise _OutOfQueries
                return s.Search(pb.SearchRequest(query=q, k=10), timeout=30)
            return call

        def ping_make(i):
            s = pb_grpc.TandemStub(grpc.insecure_channel(addr))
            return lambda n: s.Ping(pb.PingRequest(payload=b"x" * 64), timeout=10)

        def measure(name, make, c):
            before = served.used
            if name == "Search" and before >= len(evaluation):
                return None
            try:
                r = _closed_loop(make, c, args.seconds, args.warmup, name=name)
            except ValueError:  # no request answered: the unseen queries ran out during the warm-up
                if name == "Search":
                    return None
                raise
            if name == "Search":
                r["queries_used"] = served.used - before
                if served.used >= len(evaluation):
                    r["note"] = "ran out of unseen queries: the window ended early (errors count the refusals)"
            return r

        rows = []
        parts = (("Ping (echo floor)", ping_make), ("bare ST encode", encode_make), ("bare FAISS search", faiss_make),
                 ("Search", search_make))
        for c in [int(x) for x in args.concurrency.split(",")]:
            for name, make in parts:
                if name.startswith("bare") and c != 1:
                    continue  # the in-process floor parts are single-request costs
                r = measure(name, make, c)
                if r is None:
                    print(f"{name:<18} c={c:<3} not measured: every unseen query has been used", flush=True)
                    continue
                rows.append((name, c, r))
                print(f"{name:<18} c={c:<3} p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f}  p99 {r['p99']:.2f}  "
                      f"{r['rps']:.0f} req/s  n {r['n']}  errors {r['errors']}  {r.get('note', '')}", flush=True)
        print(f"\nbundle {engine.version}: {engine.n_items} items; {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| RPC | concurrency | p50 ms | p95 ms | p99 ms | req/s | requests |\n|---|---|---|---|---|---|---|")
        for name, c, r in rows:
            print(f"| {name} | {c} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | {r['n']} |")

        def ratio(found):
            echo, enc, fai, search = (found[k]["p99"] for k in ("Ping (echo floor)", "bare ST encode",
                                                                 "bare FAISS search", "Search"))
            return search / (echo + enc + fai), echo + enc + fai, search

        first = {name: r for name, c, r in rows if c == 1}
        ratios = [ratio(first)]
        print(f"\nSearch p99 at concurrency 1: {ratios[0][2]:.2f} ms = {ratios[0][0]:.2f}x the floor "
              f"(echo p99 + bare encode p99 + bare FAISS p99 = {ratios[0][1]:.2f} ms)")
        for _ in range(args.repeats):
            found = {name: measure(name, make, 1) for name, make in parts}
            if found["Search"] is None:
                print("repeats end: every unseen query has been used")
                break
            ratios.append(ratio(found))
            print(f"repeat: floor {ratios[-1][1]:.2f} ms, Search p99 {ratios[-1][2]:.2f} ms = {ratios[-1][0]:.2f}x",
                  flush=True)
        if len(ratios) > 1:
            values = [r[0] for r in ratios]
            print(f"ratio over {len(values)} measurements: median {np.median(values):.2f}x, "
                  f"range {min(values):.2f}x - {max(values):.2f}x")
        print(f"unseen queries used: {served.used} of {len(evaluation)}")
        ch.close()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


if __name__ == "__main__":
    main()
