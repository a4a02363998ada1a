"""Freshness of live catalog changes: time from an UpsertItems acknowledgement to the new item's
first appearance in Search (querying its title) and in SimilarItems, under a bounded Recommend
load in the background, against `tandem serve` in a subprocess.

    .venv/bin/python benchmarks/freshness_catalog.py --bundles BUNDLES [--new 50] [--concurrency 8]
    .venv/bin/python benchmarks/freshness_catalog.py --items 2000 --users 1500 --work /tmp/fresh

With ``--items``, a synthetic shop of that size is generated and built first (small models, split
none). The bundle is copied into a work root of its own, so the server gets a fresh event log.

For each of ``--new`` items (one UpsertItems call each, a unique made-up title) it records: the
UpsertItems latency (validation, text encoding, index growth, the durable log write: everything
before the acknowledgement), then the time from the acknowledgement until Search for the title
returns the item and until SimilarItems of it answers, polling back to back (``max_polls`` 1:
each item was found by the first call after its acknowledgement). Meanwhile
``--concurrency`` threads send Recommend for users of the shop, each at most ``--rate`` calls a
second (the bounded load). Then the same number of items again in one UpsertItems call
(``batch_upsert``: what batching saves). Recommend latency is measured both before the upserts start (the
baseline, same run) and while they run. Prints p50 / p99 of each, and ``--json FILE`` keeps them.
Target (issue #14): p99 <= 1 s from the upsert call to the item's appearance, encoding included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "freshness-bench"
#: the small build of --items (about the tests' tiny config, a little larger)
SMALL_BUILD = {"two_tower": {"dim": 32, "layers": 1, "max_len": 20, "epochs": 3, "n_negatives": 128},
               "ranker": {"epochs": 3, "hidden": [32]}}
_SYLLABLES = ("qua", "zor", "vel", "mir", "tash", "plon", "kree", "dax", "fen", "lum", "brio", "sket", "yar", "nox")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


def _build_shop(work: Path, items: int, users: int) -> Path:
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    shop, bundles = work / "shop", work / "bundles"
    if not (bundles / "CURRENT").exists():
        generate(shop, SyntheticConfig(items=items, users=users, seed=7, queries=50, events_per_user=15))
        build(shop, bundles, load_config(overrides=SMALL_BUILD, environ={}))
    return bundles


def _users(bundle: Path, n: int = 200) -> list[str]:
    text = (bundle / "histories" / "users.txt")
    users = text.read_text().split() if text.exists() else []
    return users[:n] or [""]


class _Load:
    """``concurrency`` threads sending Recommend, each at most ``rate`` calls a second."""

    def __init__(self, addr: str, users: list[str], concurrency: int, rate: float) -> None:
        import grpc

        from tandem.server._generated import tandem_pb2 as pb
        from tandem.server._generated import tandem_pb2_grpc as pb_grpc

        self.lat: list[tuple[float, float]] = []  # (start time, latency)
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

        def worker(i: int) -> None:
            rng = random.Random(i)
            with grpc.insecure_channel(addr) as ch:
                stub = pb_grpc.TandemStub(ch)
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        stub.Recommend(pb.RecommendRequest(user_id=rng.choice(users), k=10), timeout=10)
                        with self._lock:
                            self.lat.append((t0, time.perf_counter() - t0))
                    except grpc.RpcError:
                        with self._lock:
                            self.errors += 1
                    pause = 1.0 / rate - (time.perf_counter() - t0)
                    if pause > 0:
                        self._stop.wait(pause)

        self._threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        for t in self._threads:
            t.start()

    def between(self, t0: float, t1: float) -> list[float]:
        with self._lock:
            return [lat for start, lat in self.lat if t0 <= start < t1]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _encode_floor(bundle: Path, n: int = 20) -> dict[str, float]:
    """The bundle's text encoder on one short text at a time, in this process (no server, no load
    of ours): the part of an UpsertItems that no index work can remove."""
    from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig

    meta = json.loads((bundle / "sources" / "text" / "text_source.json").read_text())
    config = TextEncoderConfig.from_saved(meta["config"]["encoder"])
    exported = bundle / "sources" / "text" / "encoder"  # an ONNX backend's model, as the server runs it
    encoder = TextEncoder(config, exported=exported if config.backend != "torch" else None)
    encoder.encode(["warm up"])
    rng, times = random.Random(5), []
    for _ in range(n):
        text = f"{_word(rng)} {_word(rng)} {_word(rng)} serum. a {_word(rng)} fresh arrival"
        t0 = time.perf_counter()
        encoder.encode([text])
        times.append(time.perf_counter() - t0)
    return _pct(times)


def run(bundles: Path, work: Path, new: int, concurrency: int, rate: float, baseline_s: float) -> dict:
    import grpc

    from tandem.retrieval.bundle import current_bundle, set_current
    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    source = current_bundle(bundles)
    root = work / "fresh_root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source, root / source.name)
    set_current(root, source.name)
    port = _free_port()
    log = open(work / "freshness_server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(root),
                             "--port", str(port), "--token", TOKEN], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    addr, auth = f"127.0.0.1:{port}", (("authorization", f"Bearer {TOKEN}"),)
    out: dict = {"bundle": source.name, "new_items": new, "concurrency": concurrency, "rate_per_thread": rate,
                 "encode_one_text_floor": _encode_floor(source), "load_average": os.getloadavg()[0]}
    try:
        ch = grpc.insecure_channel(addr)
        grpc.channel_ready_future(ch).result(timeout=300)
        t, admin = pb_grpc.TandemStub(ch), pb_grpc.TandemAdminStub(ch)
        deadline = time.monotonic() + 300
        while True:
            try:
                out["items_before"] = admin.GetStatus(pb.GetStatusRequest(), metadata=auth, timeout=5).items
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        load = _Load(addr, _users(source), concurrency, rate)
        time.sleep(1.0)  # connect and warm up, not recorded
        b0 = time.perf_counter()
        time.sleep(baseline_s)
        b1 = time.perf_counter()
        rng = random.Random(11)
        ack, to_search, to_similar, total, polls = [], [], [], [], []
        for n in range(new):
            title = f"{_word(rng)} {_word(rng)} {_word(rng)} serum"
            item = pb.Item(item_id=f"fresh-{n}", title=title, description=f"a {_word(rng)} fresh arrival",
                           category="Beauty > Fresh", brand=_word(rng), price=10.0 + n, tags=["fresh"], in_stock=True)
            t0 = time.perf_counter()
            admin.UpsertItems(pb.UpsertItemsRequest(items=[item]), metadata=auth, timeout=60)
            t1 = time.perf_counter()
            ack.append(t1 - t0)
            found_search = found_similar = None
            attempts = 0
            while found_search is None or found_similar is None:
                attempts += 1
                if found_search is None:
                    r = t.Search(pb.SearchRequest(query=title, k=10), timeout=10)
                    if any(it.item_id == item.item_id for it in r.items):
                        found_search = time.perf_counter()
                if found_similar is None:
                    try:
                        t.SimilarItems(pb.SimilarItemsRequest(item_id=item.item_id, k=10), timeout=10)
                        found_similar = time.perf_counter()
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                if time.perf_counter() - t1 > 30:
                    raise RuntimeError(f"{item.item_id} not found 30 s after its acknowledgement")
            polls.append(attempts)
            to_search.append(found_search - t1)
            to_similar.append(found_similar - t1)
            total.append(max(found_search, found_similar) - t0)
        u1 = time.perf_counter()
        # the same number of items in one call: encoding and index work are paid once per batch
        batch = [pb.Item(item_id=f"fresh-batch-{n}", title=f"{_word(rng)} {_word(rng)} {_word(rng)} balm",
                         description=f"a {_word(rng)} batch arrival", category="Beauty > Fresh", brand=_word(rng),
                         price=5.0 + n, in_stock=True) for n in range(new)]
        t0 = time.perf_counter()
        admin.UpsertItems(pb.UpsertItemsRequest(items=batch), metadata=auth, timeout=120)
        t1 = time.perf_counter()
        first = t.Search(pb.SearchRequest(query=batch[-1].title, k=10), timeout=10)
        seen = any(it.item_id == batch[-1].item_id for it in first.items)
        out["batch_upsert"] = {"items": new, "ack_ms": round((t1 - t0) * 1000, 1),
                               "per_item_ms": round((t1 - t0) * 1000 / new, 1), "found_by_next_search": seen}
        b2 = time.perf_counter()
        load.stop()
        out.update({
            "upsert_ack": _pct(ack), "ack_to_search": _pct(to_search), "ack_to_similar": _pct(to_similar),
            "call_to_both_visible": _pct(total), "max_polls": max(polls),
            "recommend_baseline": _pct(load.between(b0, b1)), "recommend_during_upserts": _pct(load.between(b1, u1)),
            "recommend_during_batch": _pct(load.between(u1, b2)),
            "recommend_errors": load.errors,
            "items_after": admin.GetStatus(pb.GetStatusRequest(), metadata=auth, timeout=5).items,
        })
        ch.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=Path, help="a bundle root (its CURRENT is copied and served)")
    p.add_argument("--items", type=int, help="generate and build a synthetic shop of this many items instead")
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--work", type=Path, default=Path("/tmp/tandem-freshness"))
    p.add_argument("--new", type=int, default=50, help="new items, one UpsertItems each (default 50)")
    p.add_argument("--concurrency", type=int, default=8, help="Recommend threads in the background (default 8)")
    p.add_argument("--rate", type=float, default=10.0, help="Recommend calls a second per thread, at most (default 10)")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of load alone first (default 5)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if (args.bundles is None) == (args.items is None):
        p.error("give --bundles or --items")
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = args.bundles or _build_shop(args.work, args.items, args.users)
    result = run(bundles, args.work, args.new, args.concurrency, args.rate, args.baseline)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
