"""Prequential replay (issue #14): is a server that learns online better at predicting the next
purchase than one that only records histories?

    .venv/bin/python -m benchmarks.freshness_prequential --work /tmp/preq
    .venv/bin/python -m benchmarks.freshness_prequential --items 600 --users 600 --learn-every 1000 --json out.json
    .venv/bin/python -m benchmarks.freshness_prequential --data ../shared/data/beauty --work /tmp/preq-beauty

The shop's events (a synthetic shop generated without dirt, or ``--data``) are ordered by time; a
bundle is built (``tandem build``, split none) on the first ``--train-share`` (70%) of them; the
rest is streamed in time order through ``RecordEvents`` of a real server (in this process, on a
loopback port), and every purchase is scored before it happens: at the user's first event on the
purchased item in the stream (a purchase follows views and carts of the same item, and a served
list never holds an item the user has touched), ``Recommend(user, k=10)`` is asked, and the list
scores R@10 (hit or not) and NDCG@10 (1 / log2(rank + 1)). Purchases of items the user had touched
before the stream are left out (no arm can recommend them). The same points, in the same order,
for three arms, each with its own copy of the bundle, its own event log and its own server:

* ``frozen``: nothing is recorded: the bundle as built, every user's history frozen at the cut
  (users new in the stream stay cold-start); only the Recommend calls are made;
* ``live``: every event is recorded (today's behaviour: histories live, models fixed);
* ``online``: every event is recorded, and after every ``--learn-every`` streamed events the stream
  pauses for one ``tandem learn`` cycle (none in the last N/2 events: it would judge nothing) (:class:`tandem.server.learner.Learner`, default settings:
  the newest 20% of the new events held out, tolerance 1%); a published candidate is waited for
  until the server has swapped to it. Pausing is the best case for freshness: in production the
  stream goes on while the candidate trains;
* ``rebuilt`` (only when named in ``--arms``): at the online arm's cycle points, a full build on
  every event logged so far (cold models, nothing held out, no judge), published at once: the
  ceiling of retraining at those moments.

Prints one row per arm (points scored, R@10, NDCG@10, NDCG@10 relative to ``live``, learner cycles
by decision, wall time) and each arm's NDCG@10 gain over ``live`` with a 95% paired bootstrap
interval over the scored points (:func:`tandem.ranking.bootstrap.paired_bootstrap`); ``--json``
writes the rows (with every point's NDCG@10).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

log = logging.getLogger("benchmarks.freshness_prequential")

_SMALL_CONFIG = {"two_tower": {"dim": 32, "layers": 1, "max_len": 20, "epochs": 5, "n_negatives": 64},
                 "ranker": {"epochs": 5, "hidden": [32]}, "ranker_max_users": 2000,
                 "pipeline": {"per_source_k": 100, "fused_k": 150}}


def _read_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _events_file(data: Path) -> Path:
    for name in ("events.jsonl.gz", "events.jsonl"):
        if (data / name).is_file():
            return data / name
    raise FileNotFoundError(f"--data {data}: no events.jsonl[.gz] (this benchmark reads JSON-lines events)")


def _split_shop(data: Path, out: Path, share: float) -> tuple[list[dict], int]:
    """Write ``out`` = ``data``'s catalog + the first ``share`` of its events by time; return the rest
    (time order) and the training event count."""
    rows = _read_rows(_events_file(data))
    rows.sort(key=lambda r: (int(r["ts"]), str(r["user_id"])))
    cut = int(len(rows) * share)
    out.mkdir(parents=True, exist_ok=True)
    for p in data.iterdir():
        if p.name.startswith("items."):
            shutil.copy2(p, out / f".{p.name}.{os.getpid()}")
            os.replace(out / f".{p.name}.{os.getpid()}", out / p.name)
    # written aside, then renamed: a run sharing --work (--reuse-build) never reads half a file
    tmp = out / f".events-{os.getpid()}.jsonl.gz"
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[:cut]).encode("utf-8"))
    os.replace(tmp, out / "events.jsonl.gz")
    return rows[cut:], cut


def _scored_user(user: str, share: float) -> bool:
    """A deterministic ``share`` of the users (by a hash of the id, the same on every run and
    machine): ``--score-share`` scores only their purchases."""
    if share >= 1.0:
        return True
    digest = hashlib.sha1(user.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def _score_points(train_rows_file: Path, stream: list[dict], share: float = 1.0) -> dict[int, list[tuple[str, str]]]:
    """``{stream index: [(user, purchased item)]}``: each purchase is scored at the user's first
    event on that item in the stream; items the user touched before the stream are left out, and
    users outside the scored ``share`` (:func:`_scored_user`)."""
    touched: set[tuple[str, str]] = {(str(r["user_id"]), str(r["item_id"])) for r in _read_rows(train_rows_file)}
    first: dict[tuple[str, str], int] = {}
    for j, r in enumerate(stream):
        first.setdefault((str(r["user_id"]), str(r["item_id"])), j)
    points: dict[int, list[tuple[str, str]]] = {}
    done: set[tuple[str, str]] = set()
    for r in stream:
        key = (str(r["user_id"]), str(r["item_id"]))
        if (r.get("event", "purchase") in ("purchase", "") and key not in touched and key not in done
                and _scored_user(key[0], share)):
            done.add(key)
            points.setdefault(first[key], []).append(key)
    return points


def _pb_event(pb, r: dict):
    kw = {"user_id": str(r["user_id"]), "item_id": str(r["item_id"]), "ts": int(r["ts"]),
          "event": r.get("event") or "purchase"}
    if r.get("value") is not None:
        kw["value"] = float(r["value"])
    return pb.Event(**kw)


class _Rebuilder:
    """The ``rebuilt`` arm's stand-in for the learner: a full build (no warm start, nothing held
    out, no judge; only the text vectors of unchanged texts are reused) on the serving bundle's data plus every logged event, published at once: what
    retraining at the same moments can give at most, at a full build's cost."""

    def __init__(self, root: Path, events_log: Path) -> None:
        self.root, self.events_log = root, events_log

    def cycle(self) -> dict:
        from tandem.index_builder.candidate import log_position, train_candidate
        from tandem.retrieval.bundle import current_bundle

        serving = current_bundle(self.root)
        upto = log_position(self.events_log)
        # text vectors of unchanged texts reused (the same vectors a full build computes), both
        # models trained from scratch on the full schedule
        folder = train_candidate(serving, self.events_log, self.root, upto_seq=upto,
                                 config_overrides={"incremental": {"warm_start": False}})
        return {"decision": "published", "candidate": folder.name, "metrics": None, "upto_seq": upto}


def _run_arm(arm: str, bundle: Path, work: Path, stream: list[dict], points: dict, learn_every: int,
             k: int, learn: dict | None = None) -> dict:
    import grpc

    from tandem.ranking.loader import load_engine
    from tandem.retrieval.bundle import set_current
    from tandem.server._generated import tandem_pb2 as pb
    from tandem.server._generated import tandem_pb2_grpc as pb_grpc
    from tandem.server.learner import LearnConfig, Learner
    from tandem.server.service import ServerConfig, TandemServer

    root = work / f"arm-{arm}-{os.getpid()}"  # runs sharing --work (--reuse-build) keep apart
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(bundle, root / bundle.name)
    set_current(root, bundle.name)
    server = TandemServer(ServerConfig(bundles=root, port=0, watch_interval_s=0.2, workers=4), load_engine)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    t, admin = pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel)
    learner = None
    if arm == "online":
        learn = dict(learn or {})
        overrides = learn.pop("candidate", None)  # [build] settings of the candidates (nested dicts)
        trainer = None
        if overrides:
            from tandem.index_builder.candidate import train_candidate

            def trainer(serving, log_path, out, upto):
                return train_candidate(serving, log_path, out, upto_seq=upto, config_overrides=overrides)
        learner = Learner(LearnConfig(root, root / "events.sqlite3", **learn), trainer=trainer)
    if arm == "rebuilt":
        learner = _Rebuilder(root, root / "events.sqlite3")
    per_point: list[float] = []  # NDCG@k of each point, in order (paired across arms)
    hits = ndcg = n = 0.0
    decisions: dict[str, int] = {}
    learn_s = 0.0
    started, cpu0 = time.perf_counter(), time.process_time()
    pending: list = []
    since_learn = 0

    def flush() -> None:
        if pending:
            t.RecordEvents(pb.RecordEventsRequest(events=pending), timeout=60)
            pending.clear()

    try:
        for j, r in enumerate(stream):
            for user, item in points.get(j, ()):
                flush()
                answer = [it.item_id for it in t.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=60).items]
                n += 1
                gain = 1.0 / math.log2(answer.index(item) + 2) if item in answer else 0.0
                hits += item in answer
                ndcg += gain
                per_point.append(gain)
            if arm == "frozen":
                continue
            pending.append(_pb_event(pb, r))
            if len(pending) >= 500:
                flush()
            since_learn += 1
            if learner is not None and since_learn >= learn_every and len(stream) - (j + 1) >= learn_every // 2:
                flush()
                since_learn = 0
                t0 = time.perf_counter()
                try:
                    record = learner.cycle()
                except Exception as exc:  # noqa: BLE001 - a failed cycle is a result of the arm too
                    log.warning("learn cycle failed: %s", exc)
                    record = {"decision": "failed"}
                decisions[record["decision"]] = decisions.get(record["decision"], 0) + 1
                if record["decision"] == "published":
                    deadline = time.monotonic() + 300
                    while admin.GetStatus(pb.GetStatusRequest()).bundle_version != record["candidate"]:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the server did not swap to {record['candidate']}")
                        time.sleep(0.1)
                learn_s += time.perf_counter() - t0
                log.info("arm %s: %d/%d events streamed, cycle %s (%s)", arm, j + 1, len(stream),
                         record["decision"], json.dumps(record.get("metrics")))
        flush()
    finally:
        channel.close()
        server.stop(0)
        shutil.rmtree(root, ignore_errors=True)
    return {"arm": arm, "points": int(n), f"recall@{k}": hits / max(n, 1), f"ndcg@{k}": ndcg / max(n, 1),
            "learn_cycles": decisions, "learn_seconds": round(learn_s, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "per_point_ndcg": per_point}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="freshness_prequential", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a shop folder (items.*, events.jsonl[.gz]); default: a synthetic shop")
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--events-per-user", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-share", type=float, default=0.7)
    p.add_argument("--learn-every", type=int, default=0, metavar="N",
                   help="online arm: a learner cycle after every N streamed events (default: a fifth of the stream)")
    p.add_argument("--arms", default="frozen,live,online")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--learn", action="append", default=[], metavar="KEY=VALUE",
                   help="online arm: a LearnConfig setting other than its default (tolerance=0.02, "
                        "holdout_share=0.1, ...; repeatable); candidate=JSON: [build] settings of the "
                        "candidates, e.g. candidate='{\"incremental\": {\"warm_start\": false}}'")
    p.add_argument("--score-share", type=float, default=1.0, metavar="F",
                   help="score only the purchases of a deterministic share F of the users (a hash of the id); "
                        "every event is still streamed (default 1: all)")
    p.add_argument("--reuse-build", action="store_true",
                   help="use the bundle a previous run left in --work/built (same data, split and config) "
                        "instead of building it again")
    p.add_argument("--config", type=Path, help="TOML build config (default: a small one, see _SMALL_CONFIG)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "faiss", "bm25s", "httpx", "tandem.index_builder", "tandem.retrieval",
                  "tandem.ranking", "tandem.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config

    work = args.work or Path(tempfile.mkdtemp(prefix="preq-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = args.data
    if data is None:
        from tandem.index_builder.synthetic import SyntheticConfig, generate

        data = work / "shop"
        if not (data / "events.jsonl.gz").is_file():
            generate(data, SyntheticConfig(items=args.items, users=args.users, seed=args.seed, queries=0,
                                           events_per_user=args.events_per_user, dirt=False))
    stream, n_train = _split_shop(data.resolve(), work / "train-shop", args.train_share)
    learn: dict = {}
    for item in args.learn:
        key, _, value = item.partition("=")
        try:
            learn[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:  # a bare word (a string setting)
            learn[key.strip().replace("-", "_")] = value.strip()
    if not 0 < args.score_share <= 1:
        print(f"--score-share must be in (0, 1], got {args.score_share}", file=sys.stderr)
        return 2
    points = _score_points(work / "train-shop" / "events.jsonl.gz", stream, args.score_share)
    learn_every = args.learn_every or max(1, len(stream) // 5)
    config = load_config(args.config, overrides=None if args.config else _SMALL_CONFIG, environ={})
    t1, c1 = time.perf_counter(), time.process_time()
    if args.reuse_build and (work / "built" / "CURRENT").is_file():
        from tandem.retrieval.bundle import current_bundle

        built = current_bundle(work / "built")
    else:
        shutil.rmtree(work / "built", ignore_errors=True)
        built = build(work / "train-shop", work / "built", config).folder
    build_s, build_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    print(f"shop {data}: {n_train} events to build on, {len(stream)} streamed, {sum(map(len, points.values()))} "
          f"purchases scored; build {build_s:.0f}s ({build_cpu_s:.0f} CPU-s); online arm learns every {learn_every} "
          "events", flush=True)
    rows = []
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in ("frozen", "live", "online", "rebuilt"):
            print(f"--arms: unknown arm {arm!r} (frozen, live, online, rebuilt)", file=sys.stderr)
            return 2
        rows.append(_run_arm(arm, built, work, stream, points, learn_every, args.k, learn))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_point_ndcg"}), flush=True)
    live = next((r for r in rows if r["arm"] == "live"), None)
    k = args.k
    print(f"\n{'arm':<8} {'points':>6} {f'R@{k}':>7} {f'NDCG@{k}':>8} {'vs live':>8}  learner cycles")
    for r in rows:
        rel = (f"{100 * (r[f'ndcg@{k}'] / live[f'ndcg@{k}'] - 1):+.1f}%" if live and live[f"ndcg@{k}"] > 0 else "")
        cycles = ", ".join(f"{d} {c}" for d, c in sorted(r["learn_cycles"].items())) or "-"
        print(f"{r['arm']:<8} {r['points']:>6} {r[f'recall@{k}']:>7.4f} {r[f'ndcg@{k}']:>8.4f} {rel:>8}  {cycles}")
    if live is not None:
        from tandem.ranking.bootstrap import paired_bootstrap

        for r in rows:
            if r is not live:
                g = paired_bootstrap(np.asarray(r["per_point_ndcg"]), np.asarray(live["per_point_ndcg"]))
                r["ndcg_gain_vs_live"] = g.to_dict()
                print(f"{r['arm']} - live, NDCG@{k} per point: {g.mean:+.4f}, {100 * g.level:.0f}% paired bootstrap "
                      f"interval [{g.low:+.4f}, {g.high:+.4f}]")
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"data": str(data), "train_events": n_train, "stream_events": len(stream),
                                         "learn_every": learn_every, "build_s": round(build_s, 1),
                                         "build_cpu_s": round(build_cpu_s, 1), "score_share": args.score_share, "learn": learn,
                                         "rows": rows},
                                        indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
