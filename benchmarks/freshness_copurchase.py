"""Freshness of a new co-purchase pair: time from the acknowledgement of the RecordEvents that
make items ``a`` and ``b`` bought together until SimilarItems(``a``) returns ``b``, against a real
`tandem serve` (incremental item-CF, retrieval/item_cf_live.py).

    .venv/bin/python benchmarks/freshness_copurchase.py --bundles BUNDLES [--pairs 200] [--k 50]
    .venv/bin/python benchmarks/freshness_copurchase.py --items 3000 --users 2000 --work /tmp/fresh

With ``--items``, a synthetic shop of that size is generated and built first (small models). The
server runs on a fresh event log in a temporary folder (the bundle root is not written to). For
each pair (``a``, ``b`` picked at random where ``b`` is neither an item-CF neighbour of ``a`` nor
in SimilarItems(``a``, k) yet), one RecordEvents call carries ``--buyers`` new users each buying
``a`` then ``b``; the client then calls SimilarItems(``a``, k) back to back until ``b`` is in the
answer (or ``--timeout`` passes). Printed: p50 / p99 / max of that time, how many pairs were
visible on the first call after the acknowledgement, and, measured in the same run, the latency
of RecordEvents and of SimilarItems alone. ``--baseline-pairs N`` repeats the measurement for N
pairs against a second server started with ``--item-cf-live-entries 0`` (item-CF as built: what
Tandem did before), where a pair shows up only if fusion finds it through another source.
``--json FILE`` writes the figures.

The cost of an update on a bigger shop, in-process (no server; a random shop of ITEMS items, USERS
users and EVENTS events, Zipf-like popularity, default item-CF config)::

    .venv/bin/python benchmarks/freshness_copurchase.py --write-cost 20000 20000 300000

prints the batch fit's time, the live updater's start-up, and per RecordEvents-sized batch the
time to apply it and publish (p50 / p99): three new users buying a new pair, and one event of an
existing user on an item drawn by popularity.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(bundles: Path, event_log: Path, extra: list[str], log_file: Path) -> tuple[subprocess.Popen, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(log_file, "a")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(bundles),
                             "--port", str(port), "--event-log", str(event_log), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"tandem serve exited with {proc.returncode}; see {log_file}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return proc, addr
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"tandem serve did not become ready within 300 s; see {log_file}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _pct(values: list[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64) * 1000
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}


def _pick_pairs(bundle: Path, n: int, seed: int) -> tuple[list[tuple[str, str]], int]:
    """``n`` (a, b) item ids, b not among a's item-CF neighbours, each item used once; the bundle's newest ts."""
    from tandem.ranking.loader import load_pipeline

    p = load_pipeline(bundle)
    cf = p.sources["item_cf"]
    rng = np.random.default_rng(seed)
    used: set[int] = set()
    out = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        a, b = (int(x) for x in rng.choice(p.n_items, 2, replace=False))
        if a in used or b in used or b in cf.neighbours(a)[0]:
            continue
        used |= {a, b}
        out.append((p.catalog.item_ids[a], p.catalog.item_ids[b]))
    return out, int(p.built_at)


def measure(addr: str, pairs: list[tuple[str, str]], k: int, buyers: int, built_at: int, timeout: float,
            tag: str) -> dict:
    import grpc

    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc

    fresh, record, similar = [], [], []
    first_call = missed = already = 0
    with grpc.insecure_channel(addr) as ch:
        t = pb_grpc.TandemStub(ch)
        for n, (a, b) in enumerate(pairs):
            ask = pb.SimilarItemsRequest(item_id=a, k=k)
            t0 = time.perf_counter()
            answer = t.SimilarItems(ask)
            similar.append(time.perf_counter() - t0)
            if b in {it.item_id for it in answer.items}:
                already += 1  # fusion found b through another source: not a new pair for this test
                continue
            ts = built_at + 1000 + n
            events = [pb.Event(user_id=f"{tag}-{n}-{u}", item_id=x, ts=ts + j)
                      for u in range(buyers) for j, x in enumerate((a, b))]
            t0 = time.perf_counter()
            t.RecordEvents(pb.RecordEventsRequest(events=events))
            acked = time.perf_counter()
            record.append(acked - t0)
            calls = 0
            while True:
                calls += 1
                got = {it.item_id for it in t.SimilarItems(ask).items}
                now = time.perf_counter()
                if b in got:
                    fresh.append(now - acked)
                    first_call += calls == 1
                    break
                if now - acked > timeout:
                    missed += 1
                    break
    return {"pairs": len(pairs) - already, "skipped_already_similar": already, "visible": len(fresh),
            "visible_on_first_call": first_call, "missed_within_timeout": missed,
            "ack_to_similar_items": _pct(fresh), "record_events": _pct(record), "similar_items": _pct(similar)}


def _build_shop(work: Path, items: int, users: int) -> Path:
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    bundles = work / "bundles"
    if not (bundles / "CURRENT").exists():
        generate(work / "shop", SyntheticConfig(items=items, users=users, seed=7, queries=40, events_per_user=15))
        build(work / "shop", bundles, load_config(overrides={
            "two_tower": {"dim": 32, "layers": 1, "max_len": 20, "epochs": 3},
            "ranker": {"epochs": 3, "hidden": [32]}}, environ={}))
    return bundles


def write_cost(n_items: int, n_users: int, n_events: int, seed: int = 0) -> dict:
    from tandem.retrieval.data import Catalog, Interactions, Item
    from tandem.retrieval.item_cf import ItemCF
    from tandem.retrieval.item_cf_live import LiveEvent, LiveItemCF

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    items = rng.choice(n_items, size=n_events, p=p)
    users = rng.integers(0, n_users, size=n_events)
    ts = 1_700_000_000 + rng.integers(0, 90 * 86_400, size=n_events)
    inter = Interactions([f"u{u}" for u in range(n_users)], users, items, ts, np.full(n_events, 3),
                         np.full(n_events, np.nan))
    catalog = Catalog.from_items(Item(f"i{k}", "t") for k in range(n_items))
    t = time.perf_counter()
    cf = ItemCF().fit(catalog, inter)
    out: dict = {"items": n_items, "users": n_users, "events": n_events, "nnz": int(cf.similarity.nnz),
                 "batch_fit_s": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    live = LiveItemCF.for_interactions(cf, inter)
    out["live_start_s"] = round(time.perf_counter() - t, 2)
    newest = int(ts.max())
    pair, single = [], []
    for n in range(200):
        a, b = (int(x) for x in rng.choice(n_items, 2, replace=False))
        batch = [LiveEvent(f"new{n}-{u}", x, newest + 10 * n + j) for u in range(3) for j, x in enumerate((a, b))]
        t = time.perf_counter()
        live.record(batch)
        pair.append(time.perf_counter() - t)
    for n in range(200):
        event = LiveEvent(f"u{int(rng.integers(0, n_users))}", int(rng.choice(n_items, p=p)), newest + 5000 + n)
        t = time.perf_counter()
        live.record([event])
        single.append(time.perf_counter() - t)
    out["new_pair_batch"] = _pct(pair)
    out["existing_user_popular_item"] = _pct(single)
    out["stats"] = live.stats()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=Path, help="a bundle root (its CURRENT is served)")
    ap.add_argument("--items", type=int, help="generate and build a synthetic shop of this many items")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tandem-freshness-copurchase"))
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--buyers", type=int, default=3, help="new users buying each pair (default 3)")
    ap.add_argument("--k", type=int, default=50, help="SimilarItems k (default 50)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a pair (default 5)")
    ap.add_argument("--baseline-pairs", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write-cost", type=int, nargs=3, metavar=("ITEMS", "USERS", "EVENTS"),
                    help="measure the in-process cost of live updates on a random shop instead")
    args = ap.parse_args(argv)
    if args.write_cost:
        out = write_cost(*args.write_cost, seed=args.seed)
        print(json.dumps(out, indent=2))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return 0
    if args.bundles is None and args.items is None:
        ap.error("give --bundles or --items")
    bundles = args.bundles or _build_shop(args.work, args.items, args.users)
    from tandem.retrieval.bundle import current_bundle

    pairs, built_at = _pick_pairs(current_bundle(bundles), args.pairs + args.baseline_pairs, args.seed)
    out: dict = {"bundle": str(current_bundle(bundles)), "k": args.k, "buyers": args.buyers}
    with tempfile.TemporaryDirectory(prefix="fresh-copurchase-") as tmp:
        runs = [("live", pairs[: args.pairs], [])]
        if args.baseline_pairs:
            runs.append(("as_built", pairs[args.pairs:], ["--item-cf-live-entries", "0"]))
        for name, chosen, extra in runs:
            proc, addr = _start_server(bundles, Path(tmp) / f"{name}.sqlite3", extra, Path(tmp) / f"{name}.log")
            try:
                out[name] = measure(addr, chosen, args.k, args.buyers, built_at, args.timeout, name)
            finally:
                _stop(proc)
    for name in ("live", "as_built"):
        r = out.get(name)
        if r is None:
            continue
        f = r["ack_to_similar_items"]
        print(f"{name:9s} pairs {r['pairs']:4d} visible {r['visible']:4d} (first call {r['visible_on_first_call']}) "
              f"missed {r['missed_within_timeout']}  ack->SimilarItems p50 {f.get('p50_ms', '-')} ms "
              f"p99 {f.get('p99_ms', '-')} ms max {f.get('max_ms', '-')} ms | RecordEvents p50 "
              f"{r['record_events'].get('p50_ms', '-')} p99 {r['record_events'].get('p99_ms', '-')} ms | "
              f"SimilarItems p50 {r['similar_items'].get('p50_ms', '-')} p99 {r['similar_items'].get('p99_ms', '-')} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
