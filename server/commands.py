"""``tandem serve`` and the CLI client (over :mod:`tandem.server.client`): ``search``, ``recommend``, ``similar``,
``record``, ``get-item``, ``status`` and ``reload``.

An RPC error exits with status 1 and prints ``CODE: message`` (e.g.
``INVALID_ARGUMENT: k must be between 1 and 1000``) on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["register", "serve", "serve_config"]


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="serve a bundle over gRPC (health, reflection, metrics)",
                              description="Serve the bundle BUNDLES/CURRENT names; hot-swaps when CURRENT changes. "
                              "Settings: defaults < the [serve] section of --config < TANDEM_SERVE__* variables "
                              "(TANDEM_TOKEN for the token) < these flags.")
    s.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML config; its [serve] section is read (see docs/config.example.toml; default: none)")
    s.add_argument("--bundles", type=Path, metavar="DIR",
                   help="bundle root written by `tandem build --out` (required here or in the config)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (default 50051)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    s.add_argument("--event-log", type=Path, help="SQLite event log (default BUNDLES/events.sqlite3)")
    s.add_argument("--event-bus", metavar="redis://HOST:PORT/DB",
                   help="share the event log with other replicas: this Redis Stream is the log of record (events "
                   "are acknowledged once appended there, and every replica applies every event; Redis 7+, "
                   "appendonly with appendfsync always; see docs/operations.md; default: the SQLite --event-log)")
    s.add_argument("--event-stream", metavar="NAME",
                   help="the stream's key with --event-bus (default tandem:events)")
    s.add_argument("--event-id-retention", type=float, dest="event_id_retention_s", metavar="SECONDS",
                   help="with --event-bus: how long the fleet remembers an event_id, a repeat within it being a "
                   "duplicate (default 604800, 7 days)")
    s.add_argument("--experiment", type=Path, metavar="FILE.toml",
                   help="run an A/B experiment: users are assigned arms (bundle versions or pipeline settings) by a "
                   "stable hash and every answer to a user is logged as an exposure (default: none; see "
                   "docs/operations.md)")
    s.add_argument("--exposure-log", type=Path, metavar="SQLITE",
                   help="where --experiment logs exposures (default: exposures.sqlite3 beside the event log)")
    s.add_argument("--token", help="bearer token required by RecordEvents/StreamEvents and the admin service "
                   "(default: $TANDEM_TOKEN, alias of $TANDEM_SERVE__TOKEN)")
    s.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate (with --tls-key; "
                   "default: plaintext)")
    s.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key (default: none)")
    s.add_argument("--workers", type=int, help="request threads (default 4 per core, at least 4)")
    s.add_argument("--compute-slots", type=int,
                   help="Search/Recommend/SimilarItems calls computed at once; the rest queue (default: one per core)")
    s.add_argument("--user-memos", type=int, metavar="N",
                   help="users whose vector and history summary are kept between requests, the most recently "
                   "active computed at load; about 10 KB each (default 50000; 0: none)")
    s.add_argument("--item-cf-live-entries", type=int, metavar="N",
                   help="live item-CF: user-sequence entries kept beyond the bundle's (120-450 bytes each; the "
                   "least recently active users are evicted beyond it) (default 500000; 0: item-CF stays as built)")
    s.add_argument("--grace", type=float, dest="grace_s", metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take to finish (default 10)")
    s.add_argument("--handshake-timeout", type=float, dest="handshake_timeout_s", metavar="SECONDS",
                   help="close a connection that has not completed its handshake by then (default 10)")
    s.add_argument("--idle-timeout", type=float, dest="idle_timeout_s", metavar="SECONDS",
                   help="close a connection without calls for this long; clients reconnect (default 300)")
    s.add_argument("--keepalive-time", type=float, dest="keepalive_time_s", metavar="SECONDS",
                   help="ping a quiet connection after this long (default 60) ...")
    s.add_argument("--keepalive-timeout", type=float, dest="keepalive_timeout_s", metavar="SECONDS",
                   help="... and close it unless the ping is answered within this (default 20)")
    s.add_argument("--min-ping-interval", type=float, dest="min_ping_interval_s", metavar="SECONDS",
                   help="clients may ping at most this often; faster ones get GOAWAY (default 10)")
    s.add_argument("--processes", type=int, metavar="N",
                   help="server processes sharing the port (SO_REUSEPORT) and the event log, started and "
                   "supervised by this one; each client connection goes to one of them (default 1; see "
                   "docs/operations.md, Several processes per host)")
    s.set_defaults(handler=serve)

    def client(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=description + _CLIENT_EPILOG)
        p.add_argument("--addr", default="127.0.0.1:50051", metavar="HOST:PORT",
                       help="the server's address (default 127.0.0.1:50051)")
        p.add_argument("--token", help="bearer token, needed by record, status and reload when the server has "
                       "one (default: $TANDEM_TOKEN, else none)")
        p.add_argument("--tls-ca", type=Path, metavar="PEM",
                       help="connect with TLS, trusting this CA (the server's --tls-cert when self-signed; "
                       "default: plaintext)")
        p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="deadline of the call, retries included (default 10)")
        p.add_argument("--json", action="store_true", help="print the answer as one JSON object (default: a table)")
        return p

    def k_and_explain(p: argparse.ArgumentParser) -> None:
        p.add_argument("--k", type=int, default=10, metavar="N", help="how many items to return, 1..1000 (default 10)")
        p.add_argument("--explain", action="store_true",
                       help="show which sources found each item and the ranker's strongest features (default: off)")

    p = client("search", "search the catalog through a running server",
               "Search the serving bundle's catalog for a text query.")
    p.add_argument("--query", required=True, metavar="TEXT", help="the search text, 1..1000 characters (required)")
    p.add_argument("--user", metavar="USER_ID", help="personalise for this user (default: no personalisation)")
    p.add_argument("--candidates", metavar="FILE|IDS",
                   help="re-rank only these items, at most 1000: a file with one item id per line ('-' reads "
                   "stdin), or ids separated by commas; unknown ids are skipped and counted (default: search "
                   "the whole catalog)")
    k_and_explain(p)
    p.set_defaults(handler=_rpc(_search))
    p = client("recommend", "recommendations for a user through a running server",
               "Recommend items to a user from the user's history (an unknown user gets a cold start).")
    p.add_argument("--user", required=True, metavar="USER_ID", help="the user to recommend for (required)")
    k_and_explain(p)
    p.set_defaults(handler=_rpc(_recommend))
    p = client("similar", "items similar to an item through a running server",
               "Items similar to one item of the serving bundle.")
    p.add_argument("--item", required=True, metavar="ITEM_ID", help="the item to start from (required)")
    p.add_argument("--user", metavar="USER_ID",
                   help="who asks: only assigns an arm of the server's A/B experiment (default: nobody)")
    k_and_explain(p)
    p.set_defaults(handler=_rpc(_similar))
    p = client("record", "record one event through a running server",
               "Log one interaction durably in the server's event log; it shapes the user's next answers.")
    p.add_argument("--user", required=True, metavar="USER_ID", help="who acted (required)")
    p.add_argument("--item", required=True, metavar="ITEM_ID", help="on which item (required)")
    p.add_argument("--event", default="purchase", metavar="KIND",
                   help="view, click, cart, purchase or rate (default purchase)")
    p.add_argument("--value", type=float, metavar="X", help="e.g. the stars of a rate event (default: none)")
    p.add_argument("--ts", type=int, default=0, metavar="EPOCH_S",
                   help="when, in epoch seconds (default 0: the server's receive time)")
    p.add_argument("--event-id", metavar="ID",
                   help="idempotency key, at most 256 characters (e.g. a UUID): the server logs an id once and "
                   "acknowledges a repeat as a duplicate, so with it the call is retried while the server is "
                   "unavailable (default: none, never retried)")
    p.set_defaults(handler=_rpc(_record))
    p = client("get-item", "one catalog item of a running server",
               "Print one item of the serving bundle's catalog.")
    p.add_argument("--item", required=True, metavar="ITEM_ID", help="the item's id (required)")
    p.set_defaults(handler=_rpc(_get_item))
    p = client("status", "a running server's bundle, counts, uptime and event-log position",
               "The admin service's GetStatus (needs the token when the server has one).")
    p.set_defaults(handler=_rpc(_status))
    p = client("reload", "make a running server load a bundle now",
               "The admin service's ReloadBundle (needs the token when the server has one). Exit status 1 "
               "when the bundle is refused; the server keeps serving the one it had.")
    p.add_argument("--version", default="", metavar="VERSION", dest="bundle_version",
                   help="the bundle folder name under the server's --bundles (default: whatever CURRENT names)")
    p.set_defaults(handler=_rpc(_reload))
    p = client("upsert-items", "add or replace catalog items of a running server (live, no rebuild)",
               "The admin service's UpsertItems (needs the token when the server has one): catalog rows as in a "
               "catalog JSONL file (docs/data.md), applied in batches; each batch is all or nothing, durable and "
               "searchable from the next call once acknowledged.")
    p.add_argument("--file", required=True, metavar="JSONL",
                   help="the rows, one JSON object a line ('-' reads stdin) (required)")
    p.add_argument("--batch", type=int, default=1000, metavar="N", help="rows per call, 1..10000 (default 1000)")
    p.set_defaults(handler=_rpc(_upsert_items))
    p = client("delete-items", "remove catalog items from a running server (live, no rebuild)",
               "The admin service's DeleteItems (needs the token when the server has one): the items are never "
               "returned again; GetItem and SimilarItems of them answer NOT_FOUND.")
    p.add_argument("--items", required=True, metavar="FILE|IDS",
                   help="a file with one item id per line ('-' reads stdin), or ids separated by commas (required)")
    p.set_defaults(handler=_rpc(_delete_items))


_CLIENT_EPILOG = (" An RPC error exits with status 1 and prints CODE: message on stderr. Read-only calls, and "
                  "record with --event-id, are retried while the server is unavailable, until --timeout.")


def serve_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """The :class:`server.service.ServerConfig` of ``tandem serve``: defaults < ``[serve]`` of
    ``--config`` < ``TANDEM_SERVE__*`` of ``environ`` (default ``os.environ``; ``TANDEM_TOKEN`` is
    the token's alias) < flags. A flag whose dest is a ServerConfig field overrides that field."""
    from tandem.index_builder.config import load_section
    from tandem.server.service import ServerConfig

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)
             if getattr(args, f.name, None) is not None}
    return load_section(ServerConfig, "serve", args.config, overrides=flags, environ=environ,
                        aliases={"TANDEM_TOKEN": "token"})


def serve(args: argparse.Namespace, engine_loader: Callable[[Path], Any] | None = None) -> int:
    """``tandem serve``: the bundle's pipeline (``engine_loader(bundle_folder)`` when given, as
    the process tests pass a stand-in engine) behind the gRPC server, until SIGTERM or SIGINT."""
    from tandem.server.logs import use_json_logs
    from tandem.server.process_group import GroupMember, supervise
    from tandem.server.service import TandemServer

    config = serve_config(args)  # before anything else: a bad setting exits 2 at once
    if config.experiment is not None:
        from tandem.server.experiment import load_experiment

        load_experiment(config.experiment)  # a bad experiment file too
    use_json_logs(logging.DEBUG if args.verbose else logging.INFO)
    member = GroupMember.from_environ()
    if member is None and config.processes > 1:
        from tandem.server.event_log import EventLog

        EventLog(config.event_log_path).close()  # checked (and created) once, before any process opens it
        return supervise(config)
    if member is not None:
        config = member.config(config)
    import torch

    # request-time work is small: intra-op threads (torch, OpenBLAS, FAISS's OpenMP) only add
    # hand-offs and spin-waits; concurrency comes from the request thread pool
    # (see benchmarks/serve_latency.py)
    torch.set_num_threads(1)
    import faiss  # noqa: F401 - loaded now so that its OpenMP runtime is limited too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if engine_loader is None:
        from tandem.ranking.loader import load_engine as engine_loader
    server = TandemServer(config, engine_loader, member)
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
    print(f"tandem serving {server.manager.engine.version} on {config.host}:{port}"
          + (f", metrics on {config.host}:{server.metrics_port}" if server.metrics_port is not None else "")
          + (f" (process {member.index}, private port {server.private_port})" if member is not None else ""),
          flush=True)
    if member is not None:
        member.report_ready(pid=os.getpid(), private_port=server.private_port, metrics_port=server.metrics_port,
                            bundle=server.manager.engine.version)
        member.listen(server.group_serving, done.set)
    done.wait()
    server.stop()  # drains in-flight requests, then closes the event log
    return 0


def _rpc(handler):
    """A client command: connect with the common flags, run ``handler(args, client)``, and turn a
    TandemError into ``CODE: message`` on stderr with exit status 1."""
    def run(args: argparse.Namespace) -> int:
        from tandem.server.client import TandemClient, TandemError

        token = args.token or os.environ.get("TANDEM_TOKEN") or None
        try:
            with TandemClient(args.addr, token=token, tls_ca=args.tls_ca, timeout=args.timeout) as client:
                return handler(args, client)
        except TandemError as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(1) from None

    return run


def _print(args: argparse.Namespace, result) -> None:
    """A result dataclass as JSON, or as aligned ``field  value`` lines."""
    out = dataclasses.asdict(result)
    if args.json:
        print(json.dumps(out))
        return
    width = max(len(k) for k in out)
    for key, value in out.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        print(f"{key:<{width}}  {value if value not in ('', None) else '-'}")


def _items(args: argparse.Namespace, resp) -> int:
    if args.json:
        print(json.dumps(dataclasses.asdict(resp)))
        return 0
    unknown = f" ({resp.unknown_candidates} unknown candidates skipped)" if resp.unknown_candidates else ""
    arm = f", experiment {resp.experiment} arm {resp.experiment_arm}" if resp.experiment_arm else ""
    print(f"bundle {resp.bundle_version}{' (cold start)' if resp.cold_start else ''}{unknown}{arm}")
    for rank, it in enumerate(resp.items, 1):
        print(f"{rank:>3}. {it.item_id:<20} {it.score:>9.4f}  {it.title[:70]}")
        e = it.explanation
        if e is not None:
            src = ", ".join(f"{h.source}#{h.rank}" for h in e.sources)
            feats = ", ".join(f"{f.name}+{f.value:.2f}" for f in e.top_features)
            print(f"       found by {src}; fused {e.fused_score:.4f}" + (f"; up by {feats}" if feats else ""))
    return 0


def read_candidates(value: str) -> list[str]:
    """``--candidates``: the lines of a file (``-``: stdin), or ids separated by commas; blank
    entries and surrounding spaces are dropped."""
    if value == "-":
        text = sys.stdin.read()
    elif Path(value).is_file():
        text = Path(value).read_text(encoding="utf-8")
    else:
        return [v.strip() for v in value.split(",") if v.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _search(args, client) -> int:
    candidates = read_candidates(args.candidates) if args.candidates is not None else None
    if candidates is not None and not candidates:
        raise ValueError(f"--candidates {args.candidates!r} names no item ids")
    return _items(args, client.search(args.query, k=args.k, user_id=args.user, explain=args.explain,
                                      candidate_item_ids=candidates))


def _recommend(args, client) -> int:
    return _items(args, client.recommend(args.user, k=args.k, explain=args.explain))


def _similar(args, client) -> int:
    return _items(args, client.similar_items(args.item, k=args.k, explain=args.explain, user_id=args.user))


def _record(args, client) -> int:
    from tandem.server.client import Event

    resp = client.record(Event(args.user, args.item, event=args.event, ts=args.ts, value=args.value,
                               event_id=args.event_id))
    if args.json:
        print(json.dumps(dataclasses.asdict(resp)))
    else:
        dup = f", {resp.duplicates} already logged (same event id)" if resp.duplicates else ""
        print(f"recorded {resp.accepted} event(s), {resp.applied} applied{dup}, log position {resp.last_sequence}")
    return 0


def _get_item(args, client) -> int:
    _print(args, client.get_item(args.item))
    return 0


def _status(args, client) -> int:
    _print(args, client.status())
    return 0


def read_item_rows(path: str) -> list[dict]:
    """``--file``: one JSON object a line (blank lines skipped); a bad line raises ValueError naming it."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: expected a JSON object (one catalog row), got {type(row).__name__}")
        rows.append(row)
    return rows


def _upsert_items(args, client) -> int:
    if not 1 <= args.batch <= 10_000:
        raise ValueError(f"--batch must be 1..10000, got {args.batch}")
    rows = read_item_rows(args.file)
    upserted = added = seq = 0
    for start in range(0, len(rows), args.batch):
        resp = client.upsert_items(rows[start:start + args.batch])
        upserted, added, seq = upserted + resp.upserted, added + resp.added, resp.last_sequence
    if args.json:
        print(json.dumps({"upserted": upserted, "added": added, "last_sequence": seq}))
    else:
        print(f"upserted {upserted} item(s), {added} new, log position {seq}")
    return 0


def _delete_items(args, client) -> int:
    ids = read_candidates(args.items)
    if not ids:
        raise ValueError(f"--items {args.items!r} names no item ids")
    resp = client.delete_items(ids)
    if args.json:
        print(json.dumps(dataclasses.asdict(resp)))
    else:
        print(f"deleted {resp.deleted} item(s), {resp.unknown} unknown, log position {resp.last_sequence}")
    return 0


def _reload(args, client) -> int:
    resp = client.reload_bundle(args.bundle_version)
    _print(args, resp)
    if resp.error:
        print(f"tandem reload: the bundle was refused: {resp.error}", file=sys.stderr)
        return 1
    return 0
