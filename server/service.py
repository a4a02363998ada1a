"""The gRPC servicers and server assembly.

Each RPC: validate and convert the message (``INVALID_ARGUMENT`` naming the field), take the
current engine reference once (a hot swap never changes it mid-request), call it, convert back.
Unknown items give ``NOT_FOUND``; anything unexpected gives ``INTERNAL`` with an error id that
is also logged, and the server keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.index_builder.event_stream import DEFAULT_STREAM
from tandem.ranking.api import CannotAnswerError, Engine, UnknownItemError
from tandem.ranking.history import DEFAULT_USER_MEMOS
from tandem.ranking.live_catalog import CatalogChange
from tandem.retrieval.item_cf_live import DEFAULT_LIVE_ENTRIES
from tandem.server import convert
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.auth import AuthInterceptor
from tandem.server.bundle_manager import BundleManager
from tandem.server.event_bus import BusUnavailable, check_bus_url
from tandem.server.event_log import EventLog
from tandem.server.experiment import Experiment, load_experiment
from tandem.server.exposure_log import ExposureLog
from tandem.server.live_catalog import CatalogUnsupported
from tandem.server.log_tailer import LogTailer
from tandem.server.logs import log_fields
from tandem.server.metrics import ServiceMetrics
from tandem.server.process_group import GroupMember

__all__ = ["ServerConfig", "TandemServer", "TandemServicer", "AdminServicer", "SERVICE_NAMES"]

log = logging.getLogger("tandem.server")
rpc_log = logging.getLogger("tandem.server.rpc")

#: Full names of the two Tandem services (health and reflection are added beside them).
SERVICE_NAMES: tuple[str, ...] = (pb.DESCRIPTOR.services_by_name["Tandem"].full_name,
                                  pb.DESCRIPTOR.services_by_name["TandemAdmin"].full_name)

_OWN_METHODS = tuple(f"/{name}/" for name in SERVICE_NAMES)
_LAG_SAMPLE = 100  # events per batch whose visible lag is observed
_KINDS = {"Search": "search", "Recommend": "recommend", "SimilarItems": "similar"}  # exposure log's kind


def _cores() -> int:
    """CPUs this process may run on (a cpuset or taskset narrows it; os.cpu_count() would not)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_workers() -> int:
    # event streams and SQLite commits wait on I/O, so there are more threads than cores
    return max(4, 4 * _cores())


@dataclass(frozen=True)
class ServerConfig:
    """``tandem serve`` flags; validated at construction with messages naming the flag."""

    bundles: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    event_log: Path | None = None
    #: a redis://HOST:PORT/DB URL: the Redis Stream there is the log of record of every replica
    #: given the same URL and stream (server/bus_log.py), instead of the SQLite event log
    event_bus: str | None = None
    #: the stream's key (with --event-bus)
    event_stream: str = DEFAULT_STREAM
    #: with --event-bus: how long the fleet remembers an event_id (a repeat within it is a duplicate)
    event_id_retention_s: float = 7 * 86400.0
    #: an A/B experiment file (see server/experiment.py); None: no experiment
    experiment: Path | None = None
    #: where exposures are logged (default: exposures.sqlite3 beside the event log)
    exposure_log: Path | None = None
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = field(default_factory=_default_workers)
    compute_slots: int = field(default_factory=_cores)
    user_memos: int = DEFAULT_USER_MEMOS
    #: live item-CF: user-sequence entries kept beyond the bundle's (retrieval/item_cf_live.py); 0: off
    item_cf_live_entries: int = DEFAULT_LIVE_ENTRIES
    watch_interval_s: float = 1.0
    grace_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    #: a connection that has not finished the TLS/HTTP/2 handshake by then is closed
    handshake_timeout_s: float = 10.0
    #: a connection with no call for this long gets GOAWAY and is closed (clients reconnect)
    idle_timeout_s: float = 300.0
    #: the server pings a connection quiet for this long and closes it unless the ping is
    #: answered within ``keepalive_timeout_s`` (a peer that vanished without closing)
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    #: clients may ping at most this often (a client pinging faster gets GOAWAY)
    min_ping_interval_s: float = 10.0
    #: server processes on this host sharing the port and the event log (server/process_group.py)
    processes: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0..65535, got {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"--{name.replace('_', '-')} {path} is not a file")
        if self.token is not None and not self.token.strip():
            raise ValueError("--token must not be empty (leave it out to run without authentication)")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.compute_slots < 1:
            raise ValueError(f"--compute-slots must be >= 1, got {self.compute_slots}")
        if self.user_memos < 0:
            raise ValueError(f"--user-memos must be >= 0, got {self.user_memos}")
        if self.item_cf_live_entries < 0:
            raise ValueError(f"--item-cf-live-entries must be >= 0 (0: item-CF stays as built), "
                             f"got {self.item_cf_live_entries}")
        for name in ("handshake_timeout_s", "idle_timeout_s", "keepalive_time_s", "keepalive_timeout_s",
                     "min_ping_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be > 0 seconds, "
                                 f"got {getattr(self, name)}")
        if self.event_bus is not None:
            check_bus_url(self.event_bus)
            if self.event_log is not None:
                raise ValueError("--event-log and --event-bus exclude each other: with a bus, its stream is the "
                                 "event log (give one of the two)")
        if not self.event_stream.strip():
            raise ValueError("--event-stream must not be empty")
        if not self.event_id_retention_s >= 1:
            raise ValueError(f"event_id_retention_s must be >= 1 second, got {self.event_id_retention_s}")
        if self.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {self.processes}")
        if self.processes > 1 and self.experiment is not None:
            raise ValueError("--experiment runs in one process only: leave out --processes (or set it to 1); each "
                             "process would keep its own exposure counters")
        if self.watch_interval_s <= 0 or self.grace_s < 0:
            raise ValueError("watch_interval_s must be > 0 and grace_s >= 0")

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC server channel arguments these settings stand for."""
        ms = lambda seconds: max(1, round(seconds * 1000))  # noqa: E731
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                # one process: a second server on the same port is an error, not a silent share
                ("grpc.so_reuseport", int(self.processes > 1)),
                ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout_s)),
                ("grpc.max_connection_idle_ms", ms(self.idle_timeout_s)),
                ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
                ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
                ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_ping_interval_s))]

    @property
    def event_log_path(self) -> Path:
        return Path(self.event_log) if self.event_log is not None else Path(self.bundles) / "events.sqlite3"

    @property
    def exposure_log_path(self) -> Path:
        if self.exposure_log is not None:
            return Path(self.exposure_log)
        return self.event_log_path.with_name("exposures.sqlite3")


class _Calls:
    """Shared RPC plumbing: deadline check, timing, status accounting, error mapping, logging."""

    def __init__(self, manager: BundleManager, metrics: ServiceMetrics, compute_slots: int = 1) -> None:
        self.manager = manager
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(compute_slots)

    @contextmanager
    def compute(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold one of the server's compute slots for the body (a Search, Recommend or
        SimilarItems call into the engine), waiting at most until the client's deadline.

        The engine's work is CPU-bound Python/numpy/torch: more of it at once than there are
        cores only makes the threads take turns at the GIL and slows every request (on 2 cores,
        Recommend throughput at concurrency 16 is 239 req/s with 2 such calls at a time and 152
        with 8). Event ingestion, streams, health and admin calls never wait for a slot."""
        remaining = context.time_remaining()
        t0 = time.perf_counter()
        acquired = self._slots.acquire(timeout=None if remaining is None else max(0.0, remaining))
        self.metrics.slot_wait.observe(time.perf_counter() - t0)
        if not acquired:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for a compute slot")
        try:
            gone = _gone(context)
            if gone is not None:  # cancelled while it waited: spend no compute on it
                context.abort(gone, "the client went away while the request waited for a compute slot")
            yield
        finally:
            self._slots.release()

    def engine(self, context: grpc.ServicerContext) -> Engine:
        engine = self.manager.engine
        if engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no bundle is loaded yet; retry shortly")
        return engine  # type: ignore[return-value]

    def observe(self, engine: Engine) -> None:
        stats = getattr(engine, "stats", None)
        if isinstance(stats, Mapping) and stats:
            try:  # metrics must never fail a request
                self.metrics.observe_stats(dict(stats))
            except Exception:  # noqa: BLE001
                log.debug("could not read engine stats", exc_info=True)

    def run(self, rpc: str, context: grpc.ServicerContext, request_id: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        error_id = error = None
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                context.abort(code, "deadline exceeded before the request was handled")
            result = fn()
            code = _gone(context) or code  # the answer was computed, but nobody was waiting for it
            return result
        except convert.InvalidArgument as exc:
            code, error = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            context.abort(code, error)
        except UnknownItemError as exc:
            code = grpc.StatusCode.NOT_FOUND
            version = getattr(self.manager.engine, "version", "?")
            context.abort(code, f"unknown item_id {exc.args[0]!r} (not in bundle {version})")
        except CannotAnswerError as exc:
            code, error = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            context.abort(code, error)
        except BusUnavailable as exc:  # the shared event log did not take the batch: retry (with event ids)
            code, error = grpc.StatusCode.UNAVAILABLE, str(exc)
            context.abort(code, error)
        except Exception as exc:
            if context.code() is not None:  # context.abort() above or in fn already set the status
                code = context.code()
                raise
            gone = _gone(context)
            if gone is not None:  # e.g. reading a stream the client cancelled: not a server fault
                code = gone
                raise
            code = grpc.StatusCode.INTERNAL
            error_id = uuid.uuid4().hex[:12]
            log_fields(log, logging.ERROR, "internal error", exc_info=True, rpc=rpc, request_id=request_id,
                       error_id=error_id, error=f"{type(exc).__name__}: {exc}")
            context.abort(code, f"internal error (error id {error_id}); the server log has the details")
        finally:
            dt = time.perf_counter() - t0
            self.metrics.latency.labels(rpc).observe(dt)
            self.metrics.responses.labels(rpc, code.name).inc()
            log_fields(rpc_log, logging.INFO, "rpc", rpc=rpc, request_id=request_id, status=code.name,
                       latency_ms=round(dt * 1e3, 3), **({"error_id": error_id} if error_id else {}),
                       **({"error": error} if error else {}))


#: a stream's end is checked for a cancel in steps of this long (see :func:`_still_wanted`)
_SETTLE_STEP_S = 0.001


def _still_wanted(context: grpc.ServicerContext, what: str, settle_s: float = 0.0) -> Callable[[], None]:
    """The check an event batch or stream runs inside the log's write transaction, right before
    COMMIT (after waiting for the ingestion lock, which a swap's catch-up or another batch may
    hold): when the client no longer waits, it raises and the transaction is rolled back, so a
    client that saw CANCELLED or DEADLINE_EXCEEDED before the commit has nothing logged. A cancel
    arriving after this check cannot be undone (docs/operations.md, "Real-time events").

    A client's cancel can reach a stream's handler as a normal end of the request stream (gRPC
    completes the pending read with no message), and only then does gRPC's poller thread mark
    the call cancelled. The check first yields the GIL (``time.sleep(0)``) so that a poller
    holding that news can record it: without it 12 of 150 streams cancelled before their end
    were committed in a stress loop on 2 busy cores, with it none. On cores busier still (load
    average ~10) 1 in 100 still was: ``settle_s`` (a stream's check before any work: 5 ms) keeps
    looking for that long, outside any transaction, so a stream's end costs up to 5 ms more."""

    def check() -> None:
        time.sleep(0)
        gone = _gone(context)
        waited = 0.0
        while gone is None and waited < settle_s:  # see ``settle_s`` above
            time.sleep(_SETTLE_STEP_S)
            waited += _SETTLE_STEP_S
            gone = _gone(context)
        if gone is not None:  # abort, not raise: gRPC logs any other exception as an application error
            context.abort(gone, f"the client went away before the {what} was committed; nothing was recorded")

    return check


def _gone(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """DEADLINE_EXCEEDED or CANCELLED when the client no longer waits for this call, else None.

    gRPC answers such a call with that status whatever the handler returns; the server's logs
    and metrics must say the same."""
    if context.is_active():
        return None
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Malformed:
    """What a request message deserializes to when its bytes are not a valid message (so that
    the servicer, not gRPC, answers it: gRPC would say INTERNAL and log a traceback)."""

    __slots__ = ("message",)

    def __init__(self, type_name: str, exc: Exception) -> None:
        reason = str(exc).rsplit("': ", 1)[-1] or type(exc).__name__
        self.message = f"is not a valid {type_name} message ({reason})"


def _raise_malformed(request: _Malformed) -> None:
    raise convert.InvalidArgument(f"the request {request.message}")


class _DecodeGuard(grpc.ServerInterceptor):
    """Parses the Tandem services' request messages itself: malformed protobuf bytes or a string
    field that is not UTF-8 become INVALID_ARGUMENT through :meth:`_Calls.run` (counted, one
    log line). A stream's malformed message reaches the servicer as a :class:`_Malformed`."""

    def __init__(self, calls: _Calls) -> None:
        self.calls = calls
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(_OWN_METHODS):
            return continuation(handler_call_details)
        if method not in self._handlers:  # the method lookup behind this interceptor is static
            self._handlers[method] = self._wrap(method, continuation(handler_call_details))
        return self._handlers[method]

    def _wrap(self, method: str, handler):
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        kind = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        type_name = kind.full_name if kind is not None else "request"

        def safe_parse(raw: bytes):
            try:
                return parse(raw)
            except Exception as exc:  # noqa: BLE001 - DecodeError, or anything a parser raises
                return _Malformed(type_name, exc)

        if handler.unary_unary is not None:
            rpc, inner = method.rsplit("/", 1)[-1], handler.unary_unary

            def unary(request, context):
                if isinstance(request, _Malformed):
                    return self.calls.run(rpc, context, "", lambda: _raise_malformed(request))
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=safe_parse,
                                                       response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(handler.stream_unary, request_deserializer=safe_parse,
                                                        response_serializer=handler.response_serializer)
        return handler


class TandemServicer(pb_grpc.TandemServicer):
    """Search, Recommend, SimilarItems, RecordEvents, StreamEvents, GetItem, Ping."""

    def __init__(self, calls: _Calls, event_log: EventLog, experiment=None) -> None:
        self.calls = calls
        self.event_log = event_log
        self.experiment = experiment  # an ExperimentRunner, or None

    def _answer(self, rpc, request, context, to_plain, method):
        def go():
            plain = to_plain(request)
            user = convert.check_id(request.user_id, "user_id", required=False) or None
            engine = self.calls.engine(context)  # one reference for the whole request
            arm = None
            if self.experiment is not None:  # the user's arm answers (anonymous: the control, not counted)
                arm, engine = self.experiment.route(user, engine)
            with self.calls.compute(context):
                resp = getattr(engine, method)(plain)
            self.calls.observe(engine)
            out = convert.response_to_pb(resp, request.request_id)
            if arm is not None:
                self.experiment.expose(arm, user, _KINDS[rpc], request.request_id, resp)
                out.experiment, out.experiment_arm = self.experiment.experiment.name, arm.name
            return out

        return self.calls.run(rpc, context, request.request_id, go)

    def Search(self, request, context):
        return self._answer("Search", request, context, convert.search_from_pb, "search")

    def Recommend(self, request, context):
        return self._answer("Recommend", request, context, convert.recommend_from_pb, "recommend")

    def SimilarItems(self, request, context):
        return self._answer("SimilarItems", request, context, convert.similar_from_pb, "similar_items")

    def _record(self, events, event_ids, context, what) -> tuple[int, int, int]:
        """Log durably (unless the client went away first, see :func:`_still_wanted`), then apply."""
        seq, applied, duplicates = self.calls.manager.record(events, event_ids, _still_wanted(context, what))
        if not context.is_active():  # gone after the commit, too late to undo: say so beside the CANCELLED line
            log_fields(log, logging.INFO, f"{what} committed, then cancelled", events=len(events), last_sequence=seq)
        m = self.calls.metrics
        m.events.inc(len(events) - duplicates)
        m.events_duplicate.inc(duplicates)
        m.events_applied.inc(applied)
        now = time.time()
        for e in events[:_LAG_SAMPLE]:
            m.event_lag.observe(max(0.0, now - e.ts))
        return seq, applied, duplicates

    def _refused(self, exc: convert.InvalidArgument) -> convert.InvalidArgument:
        for reason, n in exc.refused.items():
            self.calls.metrics.events_refused.labels(reason).inc(n)
        return convert.InvalidArgument(f"{exc}; nothing of this batch was recorded", refused=exc.refused)

    def RecordEvents(self, request, context):
        def go():
            convert.check_id(request.request_id, "request_id", required=False)
            try:
                events = convert.events_from_pb(request.events)
            except convert.InvalidArgument as exc:
                raise self._refused(exc) from None
            seq, applied, duplicates = self._record(events, [e.event_id for e in request.events], context,
                                                    "batch")
            return pb.RecordEventsResponse(accepted=len(events), applied=applied, last_sequence=seq,
                                           duplicates=duplicates)

        return self.calls.run("RecordEvents", context, request.request_id, go)

    def StreamEvents(self, request_iterator, context):
        """All or nothing: every message is read and checked first (a message that does not
        parse arrives as a :class:`_Malformed`, see :class:`_DecodeGuard`), then all are logged in one transaction; one bad message
        refuses the stream with INVALID_ARGUMENT naming it, and nothing is logged. Nor is
        anything when the client cancels before the commit (:func:`_still_wanted`)."""

        def go():
            now = int(time.time())
            events, ids, first, refused = [], [], None, Counter()
            for i, raw in enumerate(request_iterator):
                if i >= convert.LIMITS["stream_events_max"]:
                    raise convert.InvalidArgument(
                        f"a stream carries at most {convert.LIMITS['stream_events_max']} events (events[{i}] is one "
                        "too many); split it into several streams; nothing of this stream was recorded")
                try:
                    if isinstance(raw, _Malformed):  # see _DecodeGuard
                        raise convert.InvalidArgument(f"events[{i}] {raw.message}", "malformed")
                    events.append(convert.event_from_pb(raw, f"events[{i}]", now))
                    ids.append(raw.event_id)
                    continue
                except convert.InvalidArgument as exc:
                    error = exc
                refused.update(error.refused)
                first = first or error
            if first is not None:
                more = sum(refused.values()) - 1
                raise self._refused(convert.InvalidArgument(
                    f"{first}" + (f" (and {more} more refused events)" if more else ""), refused=refused))
            _still_wanted(context, "stream", settle_s=0.005)()  # before any work
            seq, applied, duplicates = self._record(events, ids, context, "stream") if events else (
                self.event_log.position(), 0, 0)
            return pb.RecordEventsResponse(accepted=len(events), applied=applied, last_sequence=seq,
                                           duplicates=duplicates)

        return self.calls.run("StreamEvents", context, "", go)

    def GetItem(self, request, context):
        def go():
            item_id = convert.check_id(request.item_id, "item_id")
            return convert.item_to_pb(self.calls.engine(context).get_item(item_id))

        return self.calls.run("GetItem", context, "", go)

    def Ping(self, request, context):
        return self.calls.run("Ping", context, "", lambda: pb.PingResponse(payload=request.payload))


class AdminServicer(pb_grpc.TandemAdminServicer):
    """ReloadBundle, GetStatus and the live catalog's UpsertItems, StreamUpsertItems and DeleteItems
    (token-protected when the server has a token)."""

    def __init__(self, calls: _Calls, event_log: EventLog, started: float) -> None:
        self.calls = calls
        self.event_log = event_log
        self.started = started

    def ReloadBundle(self, request, context):
        def go():
            version = request.version or None
            if version is not None:
                try:
                    self.calls.manager.bundle_folder(version)
                except ValueError as exc:
                    raise convert.InvalidArgument(str(exc)) from None
            swapped, error = self.calls.manager.reload(version)
            engine = self.calls.manager.engine
            return pb.ReloadBundleResponse(version=getattr(engine, "version", ""), swapped=swapped, error=error)

        return self.calls.run("ReloadBundle", context, "", go)

    def GetStatus(self, request, context):
        def go():
            e = self.calls.manager.engine
            return pb.GetStatusResponse(
                bundle_version=getattr(e, "version", ""), items=e.n_items if e else 0, users=e.n_users if e else 0,
                uptime_seconds=time.time() - self.started, event_log_sequence=self.event_log.position(),
                last_reload_error=self.calls.manager.last_error, bundle_built_at=int(getattr(e, "built_at", 0)))

        return self.calls.run("GetStatus", context, "", go)

    # -- live catalog (docs/operations.md, "Live catalog updates") ----------------------------
    def _change(self, changes, context, what: str) -> tuple[int, dict]:
        try:
            seq, counts = self.calls.manager.change_catalog(changes, _still_wanted(context, what))
        except CatalogUnsupported as exc:
            raise CannotAnswerError(str(exc)) from None
        self.calls.metrics.bundle_items.set(self.calls.manager.engine.n_items)  # rows, deleted ones included
        return seq, counts

    def UpsertItems(self, request, context):
        def go():
            convert.check_id(request.request_id, "request_id", required=False)
            items = convert.items_from_pb(request.items)
            seq, counts = self._change([CatalogChange.upsert(i) for i in items], context, "upsert") if items else (
                self.event_log.position(), {"upserted": 0, "added": 0})
            return pb.UpsertItemsResponse(upserted=counts["upserted"], added=counts["added"], last_sequence=seq)

        return self.calls.run("UpsertItems", context, request.request_id, go)

    def StreamUpsertItems(self, request_iterator, context):
        def go():
            raws = []
            for i, raw in enumerate(request_iterator):
                if isinstance(raw, _Malformed):
                    raise convert.InvalidArgument(f"items[{i}] {raw.message}")
                raws.append(raw)
            items = convert.items_from_pb(raws, limit=convert.LIMITS["stream_events_max"])
            seq, counts = self._change([CatalogChange.upsert(i) for i in items], context, "stream") if items else (
                self.event_log.position(), {"upserted": 0, "added": 0})
            return pb.UpsertItemsResponse(upserted=counts["upserted"], added=counts["added"], last_sequence=seq)

        return self.calls.run("StreamUpsertItems", context, "", go)

    def DeleteItems(self, request, context):
        def go():
            convert.check_id(request.request_id, "request_id", required=False)
            ids = convert.item_ids_from_pb(request.item_ids)
            seq, counts = self._change([CatalogChange.delete(i) for i in ids], context, "delete") if ids else (
                self.event_log.position(), {"deleted": 0, "unknown": 0})
            return pb.DeleteItemsResponse(deleted=counts["deleted"], unknown=counts["unknown"], last_sequence=seq)

        return self.calls.run("DeleteItems", context, request.request_id, go)


def _tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """The server credentials of a PEM certificate (chain) and its private key. Each file is
    checked first, so that a bad one is named (gRPC only fails to bind the port)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise RuntimeError(f"--tls-cert {cert} holds no PEM certificate that can be read ({exc}); give the "
                           "certificate (chain) file, '-----BEGIN CERTIFICATE-----' ...") from None
    try:
        # an encrypted key gets an empty password instead of a prompt on the terminal
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise RuntimeError(f"--tls-key {key} is not the PEM private key of --tls-cert {cert} ({exc}); give the "
                           "unencrypted key the certificate was made with") from None
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


class TandemServer:
    """Assembles and runs the service; ``start()`` returns once the first bundle serves."""

    def __init__(self, config: ServerConfig, engine_loader: Callable[[Path], Engine],
                 member: GroupMember | None = None) -> None:
        self.config = config
        #: this server's place in a group of processes (tandem serve --processes N), or None
        self.member = member
        self.metrics = ServiceMetrics()
        # a bad experiment file fails before anything is opened or loaded
        self.experiment: Experiment | None = load_experiment(config.experiment) if config.experiment else None
        self.event_log = self._open_event_log(config, shared=member is not None)
        self.exposure_log: ExposureLog | None = None
        self.experiment_runner = None

        def on_swap(engine: Engine) -> None:
            self.metrics.bundle.info({"version": str(engine.version), "built_at": str(engine.built_at)})
            self.metrics.bundle_items.set(engine.n_items)
            self.metrics.bundle_users.set(engine.n_users)
            self.metrics.swaps.inc()

        def load(folder: Path) -> Engine:
            engine = engine_loader(folder)
            if hasattr(engine, "item_cf_live_entries"):  # before the event log is replayed into it
                engine.item_cf_live_entries = config.item_cf_live_entries
            return engine

        self.metrics.watch_item_cf(lambda: self.manager.engine)
        self.manager = BundleManager(config.bundles, load, self.event_log, on_swap,
                                     on_refused=lambda _msg: self.metrics.refused.inc(),
                                     warm_users=config.user_memos)
        if config.event_bus is not None:
            self.event_log.bind(self.manager.ingest_lock, self.manager.apply_logged)
        self.tailer: LogTailer | None = None
        if member is not None and config.event_bus is None:
            # the other processes' events reach this one's engines through the log (with a bus, each
            # process is a replica that follows the stream)
            self.tailer = self.manager.tailer = LogTailer(self.event_log, self.manager,
                                                          on_tailed=self.metrics.events_tailed.inc)
        self.private_port: int | None = None
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def _open_event_log(self, config: ServerConfig, shared: bool = False):
        """The SQLite event log (``shared``: appended to by the other processes of a ``--processes``
        group too), or with ``--event-bus`` the replica's view of the shared stream."""
        if config.event_bus is None:
            return EventLog(config.event_log_path, shared=shared)
        import socket

        from tandem.server.bus_log import BusEventLog, BusMetrics
        from tandem.server.event_bus import RedisStreamBus

        origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this process, this start
        bus = RedisStreamBus(config.event_bus, config.event_stream, origin=origin,
                             key_retention_s=config.event_id_retention_s)
        return BusEventLog(bus, BusMetrics(self.metrics.registry))

    def _on_denied(self, method: str) -> None:
        self.metrics.responses.labels(method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED.name).inc()

    def start(self) -> int:
        """Load the current bundle (replaying the event log), bind, serve; returns the gRPC port."""
        cfg = self.config
        try:  # before the (slow) bundle load: a bad file fails at once
            creds = _tls_credentials(Path(cfg.tls_cert), Path(cfg.tls_key)) if cfg.tls_cert is not None else None
        except RuntimeError:
            self.event_log.close()
            raise
        bus = cfg.event_bus is not None
        try:
            if bus:  # the cursor at the end of the stream: the bundle load replays up to it
                self.event_log.open()
            _, error = self.manager.reload()
            if bus and self.manager.engine is not None:  # and what came during the load: then SERVING
                caught = self.event_log.catch_up()
                self.event_log.follow()
                log_fields(log, logging.INFO, "event bus caught up", bus=self.event_log.path, events=caught)
        except BusUnavailable as exc:
            self.event_log.close()
            raise RuntimeError(f"cannot serve: {exc} (a replica catches up with the stream before it serves)") from None
        if self.manager.engine is None:
            self.event_log.close()
            raise RuntimeError(f"cannot serve: no usable bundle under {self.config.bundles} ({error})")
        if self.experiment is not None:
            from tandem.server.experiment_runner import ExperimentRunner

            try:
                self.exposure_log = ExposureLog(cfg.exposure_log_path)
                self.experiment_runner = ExperimentRunner(self.experiment, self.manager, self.exposure_log,
                                                          self.metrics)
                self.experiment_runner.start()
            except (RuntimeError, ValueError, OSError) as exc:
                self._close_logs()
                raise RuntimeError(f"cannot serve: {exc}") from None
        calls = _Calls(self.manager, self.metrics, cfg.compute_slots)
        # the token check first: a denied call's bytes are never parsed
        interceptors = [AuthInterceptor(cfg.token, self._on_denied)] if cfg.token else []
        interceptors.append(_DecodeGuard(calls))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rpc"),
                                  interceptors=interceptors, options=cfg.grpc_options())
        pb_grpc.add_TandemServicer_to_server(TandemServicer(calls, self.event_log, self.experiment_runner),
                                             self.server)
        pb_grpc.add_TandemAdminServicer_to_server(AdminServicer(calls, self.event_log, time.time()), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if creds is not None:
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            self.port = 0
            error = str(exc)
        else:
            error = "add_port returned 0"
        if self.port and self.member is not None:  # where only this process answers (tests, probes)
            private = f"{cfg.host}:0"
            self.private_port = (self.server.add_secure_port(private, creds) if creds is not None
                                 else self.server.add_insecure_port(private))
        if not self.port:
            self._close_logs()
            raise RuntimeError(f"could not bind {address} ({error}); is another server on that port?")
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
        self.server.start()
        self.manager.watch(cfg.watch_interval_s)
        if self.tailer is not None:
            self.tailer.start()
        # a group's process says SERVING once every process is ready (group_serving)
        status = health_pb2.HealthCheckResponse.NOT_SERVING if self.member else health_pb2.HealthCheckResponse.SERVING
        for service in ("", *SERVICE_NAMES):
            self.health.set(service, status)
        log_fields(log, logging.INFO, "serving", address=f"{cfg.host}:{self.port}",
                   bundle=self.manager.engine.version, metrics_port=self.metrics_port, tls=cfg.tls_cert is not None,
                   auth=bool(cfg.token), event_log=str(self.event_log.path), replayed=self.manager.replayed)
        return self.port

    def group_serving(self) -> None:
        """Every process of this one's group is ready: say SERVING."""
        if not self._stopped.is_set():
            for service in ("", *SERVICE_NAMES):
                self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float | None = None) -> None:
        """Drain: report NOT_SERVING, stop accepting, let in-flight requests finish (up to the
        grace period), then close the event log and the metrics endpoint."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.manager.stop()
        if self.server is not None:
            self.server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        if self.tailer is not None:
            self.tailer.stop()
        self._close_logs()
        self.metrics.close()
        log_fields(log, logging.INFO, "stopped", event_log_sequence=self.event_log.position())

    def _close_logs(self) -> None:
        self.event_log.close()
        if self.exposure_log is not None:
            self.exposure_log.close()

    def wait(self) -> None:
        if self.server is not None:
            self.server.wait_for_termination()
