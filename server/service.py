"""The gRPC servicers, the auth interceptor, and server assembly.

Each RPC: validate and convert the message (``INVALID_ARGUMENT`` naming the field), take the
current engine reference once (a hot swap never changes it mid-request), call it, convert back.
Unknown items give ``NOT_FOUND``; anything unexpected gives ``INTERNAL`` with an error id that
is also logged, and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ranking.api import Engine, UnknownItemError
from server import convert
from server._generated import tandem_pb2 as pb
from server._generated import tandem_pb2_grpc as pb_grpc
from server.bundle_manager import BundleManager
from server.event_log import EventLog
from server.metrics import ServiceMetrics

__all__ = ["ServerConfig", "TandemServer", "TandemServicer", "AdminServicer", "AuthInterceptor"]

log = logging.getLogger("tandem.server")

_PROTECTED = ("/tandem.v1.Tandem/RecordEvents", "/tandem.v1.Tandem/StreamEvents", "/tandem.v1.TandemAdmin/")


@dataclass(frozen=True)
class ServerConfig:
    bundles: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    event_log: Path | None = None
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = max(4, 4 * (os.cpu_count() or 1))
    watch_interval_s: float = 1.0
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")


def _log(level: int, msg: str, **fields: object) -> None:
    log.log(level, json.dumps({"ts": round(time.time(), 3), "level": logging.getLevelName(level), "msg": msg,
                               **fields}, default=str))


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on event ingestion and the admin service."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        def deny(request, context):  # noqa: ARG001
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if any(method.startswith(p) for p in _PROTECTED):
            meta = dict(handler_call_details.invocation_metadata or ())
            if meta.get("authorization") != self._expected:
                return self._deny_stream if method.endswith("StreamEvents") else self._deny_unary
        return continuation(handler_call_details)


class _Calls:
    """Shared RPC plumbing: timing, status accounting, error mapping."""

    def __init__(self, manager: BundleManager, metrics: ServiceMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def engine(self, context: grpc.ServicerContext) -> Engine:
        engine = self.manager.engine
        if engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no bundle is loaded yet")
        return engine  # type: ignore[return-value]

    def run(self, rpc: str, context: grpc.ServicerContext, request_id: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                context.abort(code, "deadline exceeded before the request was handled")
            return fn()
        except convert.InvalidArgument as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(exc))
        except UnknownItemError as exc:
            code = grpc.StatusCode.NOT_FOUND
            context.abort(code, f"unknown item_id {exc.args[0]!r} (not in bundle "
                                f"{getattr(self.manager.engine, 'version', '?')})")
        except grpc.RpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server must keep serving
            if context.code() is not None:  # an abort above already set the status
                code = context.code()
                raise
            code = grpc.StatusCode.INTERNAL
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s in %s", error_id, rpc)
            _log(logging.ERROR, "internal error", rpc=rpc, request_id=request_id, error_id=error_id,
                 error=f"{type(exc).__name__}: {exc}")
            context.abort(code, f"internal error (error id {error_id}); the server logged the details")
        finally:
            dt = time.perf_counter() - t0
            self.metrics.latency.labels(rpc).observe(dt)
            self.metrics.responses.labels(rpc, code.name).inc()
            _log(logging.INFO, "rpc", rpc=rpc, request_id=request_id, status=code.name,
                 latency_ms=round(dt * 1e3, 3))


class TandemServicer(pb_grpc.TandemServicer):
    def __init__(self, calls: _Calls, event_log: EventLog) -> None:
        self.calls = calls
        self.event_log = event_log

    def _answer(self, rpc, request, context, to_plain, method):
        def go():
            plain = to_plain(request)
            engine = self.calls.engine(context)
            resp = getattr(engine, method)(plain)
            stats = getattr(engine, "stats", None)
            if stats:
                self.calls.metrics.observe_stats(dict(stats))
            return convert.response_to_pb(resp, request.request_id)

        return self.calls.run(rpc, context, request.request_id, go)

    def Search(self, request, context):
        return self._answer("Search", request, context, convert.search_from_pb, "search")

    def Recommend(self, request, context):
        return self._answer("Recommend", request, context, convert.recommend_from_pb, "recommend")

    def SimilarItems(self, request, context):
        return self._answer("SimilarItems", request, context, convert.similar_from_pb, "similar_items")

    def _record(self, events) -> pb.RecordEventsResponse:
        seq = self.event_log.append(events)  # durable before anything else happens
        self.calls.metrics.events.inc(len(events))
        engine = self.calls.manager.engine
        applied = engine.record_events(events) if engine is not None else 0
        self.calls.metrics.events_applied.inc(applied)
        now = time.time()
        for e in events[:100]:
            self.calls.metrics.event_lag.observe(max(0.0, now - e.ts))
        return pb.RecordEventsResponse(accepted=len(events), applied=applied, last_sequence=seq)

    def RecordEvents(self, request, context):
        return self.calls.run("RecordEvents", context, request.request_id,
                              lambda: self._record(convert.events_from_pb(request.events)))

    def StreamEvents(self, request_iterator, context):
        def go():
            total = pb.RecordEventsResponse()
            batch = []
            for msg in request_iterator:
                batch.append(msg)
                if len(batch) >= 1000:
                    r = self._record(convert.events_from_pb(batch))
                    total.accepted += r.accepted
                    total.applied += r.applied
                    total.last_sequence = r.last_sequence
                    batch = []
            r = self._record(convert.events_from_pb(batch)) if batch else None
            if r is not None:
                total.accepted += r.accepted
                total.applied += r.applied
                total.last_sequence = r.last_sequence
            else:
                total.last_sequence = total.last_sequence or self.event_log.position()
            return total

        return self.calls.run("StreamEvents", context, "", go)

    def GetItem(self, request, context):
        def go():
            item_id = convert.check_id(request.item_id, "item_id")
            return convert.item_to_pb(self.calls.engine(context).get_item(item_id))

        return self.calls.run("GetItem", context, "", go)

    def Ping(self, request, context):
        return pb.PingResponse(payload=request.payload)


class AdminServicer(pb_grpc.TandemAdminServicer):
    def __init__(self, calls: _Calls, event_log: EventLog, started: float) -> None:
        self.calls = calls
        self.event_log = event_log
        self.started = started

    def ReloadBundle(self, request, context):
        def go():
            version = convert.check_id(request.version, "version", required=False) or None
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


class TandemServer:
    """Assembles and runs the service; ``start()`` returns once the first bundle serves."""

    def __init__(self, config: ServerConfig, engine_loader: Callable[[Path], Engine]) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.event_log = EventLog(config.event_log or Path(config.bundles) / "events.sqlite3")

        def on_swap(engine: Engine) -> None:
            self.metrics.bundle.info({"version": engine.version})
            self.metrics.bundle_items.set(engine.n_items)
            self.metrics.swaps.inc()

        self.manager = BundleManager(config.bundles, engine_loader, self.event_log, on_swap)
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self._stopped = threading.Event()

    def start(self) -> int:
        swapped, error = self.manager.reload()
        if self.manager.engine is None:
            raise RuntimeError(f"cannot serve: no usable bundle under {self.config.bundles} ({error})")
        interceptors = [AuthInterceptor(self.config.token)] if self.config.token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.config.workers),
                                  interceptors=interceptors,
                                  options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        calls = _Calls(self.manager, self.metrics)
        pb_grpc.add_TandemServicer_to_server(TandemServicer(calls, self.event_log), self.server)
        pb_grpc.add_TandemAdminServicer_to_server(AdminServicer(calls, self.event_log, time.time()), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (pb.DESCRIPTOR.services_by_name["Tandem"].full_name,
                 pb.DESCRIPTOR.services_by_name["TandemAdmin"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(self.config.tls_key).read_bytes(),
                                                  Path(self.config.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port, self.config.host)
        self.server.start()
        self.manager.watch(self.config.watch_interval_s)
        for service in ("", *names[:2]):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        _log(logging.INFO, "serving", address=f"{self.config.host}:{self.port}",
             bundle=self.manager.engine.version, metrics_port=self.config.metrics_port)
        return self.port

    def stop(self) -> None:
        """Drain: stop accepting, let in-flight requests finish (grace), close the event log."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.manager.stop()
        if self.server is not None:
            self.server.stop(self.config.grace_s).wait()
        self.event_log.close()
        _log(logging.INFO, "stopped")

    def wait(self) -> None:
        if self.server is not None:
            self.server.wait_for_termination()
