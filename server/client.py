"""The Python client of a Tandem server: every RPC of ``tandem.v1.Tandem`` and ``TandemAdmin``,
plus the standard health check, with typed results.

Quick start::

    from tandem.server.client import Event, Filters, TandemClient, TandemError

    with TandemClient("127.0.0.1:50051", token="secret", timeout=5.0) as tandem:
        tandem.wait_until_serving(timeout=30)
        hits = tandem.search("wireless earbuds", k=5, filters=Filters(in_stock_only=True))
        for item in hits.items:
            print(item.item_id, item.score, item.title)
        # re-rank items you already have (at most 1,000): only they come back, in Tandem's order
        mine = tandem.search("wireless earbuds", k=3, candidate_item_ids=["i0000034", "i0000160", "i0000430"])
        print(mine.item_ids, mine.unknown_candidates)   # ids the bundle does not know are skipped and counted
        tandem.record(Event("u0000007", "i0004629", event="click", event_id="3f0c9b2e-click-1"))
        try:
            tandem.recommend("u0000007", k=0)
        except TandemError as exc:
            print(exc.code, exc.field, exc.message)   # INVALID_ARGUMENT k k must be between 1 and 1000, got 0

:class:`AsyncTandemClient` has the same methods as coroutines (``grpc.aio``); create it inside
the running event loop (``async with AsyncTandemClient(...) as tandem:``).

Errors. Every failed call raises :class:`TandemError`: ``.code`` is the gRPC status name
(``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ``"UNAUTHENTICATED"``, ``"UNAVAILABLE"``,
``"DEADLINE_EXCEEDED"``, ...), ``.message`` the server's text and ``.field`` the request field
the message names (``"k"``, ``"filters.price_min"``, ``"events[3].event"``, ``"item_id"``), or None.

Deadlines and retries. ``timeout`` (per client, overridable per call) is the deadline of the
whole call in seconds, retries and back-off included. Only calls that cannot do anything twice
are retried: Search, Recommend, SimilarItems, GetItem, Ping, GetStatus, the health check, and a
:meth:`~TandemClient.record` (RecordEvents) whose every event carries an ``event_id``: the server
acknowledges an event whose id its log already holds without logging or applying it again, so
repeating a batch whose answer was lost is safe (the retry's :attr:`Recorded.duplicates` then
counts what the lost attempt logged). A ``record()`` with any event lacking an ``event_id`` is
never retried (an event whose answer was lost may still have been logged, and would be logged
twice), nor is StreamEvents (its iterator cannot be replayed) or ReloadBundle (a repeated reload
answers ``swapped=False`` and hides the first swap). A retried call is attempted again when it failed with

- ``UNAVAILABLE``: no connection (server not started yet, restarting, unreachable) or the
  server has no bundle loaded yet; or
- ``DEADLINE_EXCEEDED`` of one attempt: only when :attr:`RetryPolicy.attempt_timeout_s` cut
  the attempt short while the call's own deadline still has time left.

Any other status is final. Between attempts the client sleeps an exponentially growing delay
(``initial_backoff_s * multiplier ** (attempt - 1)``, capped at ``max_backoff_s``) of which a
random half is jitter, and it never sleeps past the call's deadline.

Streams are all or nothing, as on the server: :meth:`~TandemClient.stream_events` sends events
as its iterator yields them and the server logs them in one transaction when the stream ends.
When an element is not an :class:`Event` of the documented types, or the iterator itself raises,
the client cancels the call before the stream ends, so nothing of the stream is recorded, and
raises ``TandemError("INVALID_ARGUMENT")`` naming ``events[i]`` (or the iterator's own exception,
unchanged).

Authentication and TLS: ``token`` is sent as ``authorization: Bearer <token>`` metadata (the
server demands it for RecordEvents, StreamEvents and the admin service when it runs with
``--token``); ``tls_ca`` (a PEM file, the server's ``--tls-cert`` when self-signed) or
``tls=True`` (the system's roots) connects with TLS.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.client_types import (
    CatalogChanged,
    Event,
    Explanation,
    FeatureContribution,
    Filters,
    Item,
    Recorded,
    Reloaded,
    Results,
    ScoredItem,
    SourceHit,
    Status,
    changed_from_pb,
    event_to_pb,
    filters_to_pb,
    item_from_pb,
    item_to_pb,
    recorded_from_pb,
    reloaded_from_pb,
    results_from_pb,
    status_from_pb,
)

__all__ = ["TandemClient", "AsyncTandemClient", "TandemError", "RetryPolicy", "NO_RETRY", "IDEMPOTENT_RPCS",
           "CatalogChanged",
           "RETRIED_CODES", "Filters", "Event", "Results", "ScoredItem", "Explanation", "SourceHit",
           "FeatureContribution", "Recorded", "Item", "Reloaded", "Status", "parse_field"]

#: RPCs that read only, so a retry cannot do anything twice (RecordEvents is retried too when
#: every event of the batch carries an ``event_id``).
IDEMPOTENT_RPCS: frozenset[str] = frozenset(
    {"Search", "Recommend", "SimilarItems", "GetItem", "Ping", "GetStatus", "Health/Check"})
#: Status codes after which an idempotent call is attempted again (DEADLINE_EXCEEDED only when
#: the attempt's own deadline, not the call's, ran out).
RETRIED_CODES: tuple[str, ...] = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

# "k must be ...", "filters.price_min (3.0) must ...", "events[3].event must ...", "unknown item_id 'x' ..."
_FIELD_RE = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*)"
                       r"(?: \([^)]*\)| '[^']*'| -?[0-9][0-9.e+]*)? (?:must|is)\b")
_UNKNOWN_RE = re.compile(r"^unknown (?P<field>[a-z_][a-z0-9_.]*) '")


def parse_field(message: str) -> str | None:
    """The request field a server message names (``"k must be between 1 and 1000, got 0"`` -> ``"k"``)."""
    m = _FIELD_RE.match(message) or _UNKNOWN_RE.match(message)
    return m.group("field") if m else None


class TandemError(Exception):
    """A failed call. ``code``: the gRPC status name; ``message``: the server's (or client's) text;
    ``field``: the request field the message names, or None; ``rpc``: the method called."""

    def __init__(self, code: str, message: str, field: str | None = None, rpc: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.rpc = rpc

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError, rpc: str) -> TandemError:
        code = exc.code()
        message = exc.details() or ""
        return cls(code.name if code is not None else "UNKNOWN", message, parse_field(message), rpc)


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried (see the module docstring); ``max_attempts`` counts the first."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 3.0
    multiplier: float = 2.0
    attempt_timeout_s: float | None = None   # each attempt's own deadline; None: the call's

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(f"initial_backoff_s must be > 0 and <= max_backoff_s ({self.max_backoff_s}), "
                             f"got {self.initial_backoff_s}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.attempt_timeout_s is not None and self.attempt_timeout_s <= 0:
            raise ValueError(f"attempt_timeout_s must be > 0 or None, got {self.attempt_timeout_s}")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): half fixed, half jitter."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base / 2 + rng.uniform(0, base / 2)


#: One attempt, whatever the status.
NO_RETRY = RetryPolicy(max_attempts=1)


class _Attempts:
    """The deadline bookkeeping of one call: each attempt's timeout and, after a failure, the
    delay before the next attempt or None to give up."""

    def __init__(self, policy: RetryPolicy, timeout: float, rng: random.Random) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + timeout
        self.rng = rng
        self.n = 0
        self.cut_short = False

    def next_timeout(self) -> float:
        self.n += 1
        remaining = max(0.0, self.deadline - time.monotonic())
        per = self.policy.attempt_timeout_s
        self.cut_short = per is not None and per < remaining
        return per if self.cut_short else remaining

    def delay(self, code: grpc.StatusCode | None) -> float | None:
        if self.n >= self.policy.max_attempts:
            return None
        if not (code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.DEADLINE_EXCEEDED and self.cut_short)):
            return None
        wait = self.policy.backoff(self.n, self.rng)
        return wait if time.monotonic() + wait < self.deadline else None


def _k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < 2**32:
        raise TandemError("INVALID_ARGUMENT", f"k must be a positive integer, got {k!r}", "k")
    return k


def _candidates(ids: Iterable[str] | None, field: str = "candidate_item_ids") -> list[str]:
    """The caller's candidates as a list of strings; a bare string (one id, or ids joined by
    commas) is refused rather than sent as its characters. The server checks the rest."""
    if ids is None:
        return []
    if isinstance(ids, (str, bytes)):
        raise TandemError("INVALID_ARGUMENT", f"{field} must be a list of item ids, got a {type(ids).__name__} "
                          f"({ids[:40]!r})", field)
    out = list(ids)
    for i, item_id in enumerate(out):
        if not isinstance(item_id, str):
            raise TandemError("INVALID_ARGUMENT", f"{field}[{i}] must be a string item id, got "
                              f"{type(item_id).__name__}", f"{field}[{i}]")
    return out


def _event(e: object, field: str) -> pb.Event:
    if not isinstance(e, Event):
        raise TandemError("INVALID_ARGUMENT", f"{field} must be an Event, got {type(e).__name__}", field)
    try:
        return event_to_pb(e)
    except (TypeError, ValueError) as exc:  # e.g. ts="yesterday"
        raise TandemError("INVALID_ARGUMENT", f"{field} must be an Event of the documented types ({exc})",
                          field) from None


def _events(events: Event | Iterable[Event], field: str = "events") -> list[pb.Event]:
    if isinstance(events, Event):
        events = [events]
    return [_event(e, f"{field}[{i}]") for i, e in enumerate(events)]


class _Base:
    """Configuration, channel options and request building shared by both clients."""

    def __init__(self, addr: str, *, token: str | None, tls_ca: str | Path | None, tls: bool,
                 tls_server_name: str | None, timeout: float, retry: RetryPolicy,
                 options: Iterable[tuple[str, object]]) -> None:
        if not isinstance(addr, str) or not addr.strip():
            raise ValueError(f"addr must be HOST:PORT, got {addr!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if token is not None and not token.strip():
            raise ValueError("token must not be empty (pass None to send no token)")
        self.addr = addr
        self.timeout = float(timeout)
        self.retry = retry
        self._rng = random.Random()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._options = [
            # reconnect on the client's own back-off schedule, not gRPC's (1 s, growing to 120 s)
            ("grpc.initial_reconnect_backoff_ms", int(retry.initial_backoff_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(retry.initial_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(retry.max_backoff_s * 1000)),
            *(("grpc.ssl_target_name_override", tls_server_name),) * (tls_server_name is not None),
            *options,
        ]
        self._credentials = None
        if tls_ca is not None:
            path = Path(tls_ca)
            if not path.is_file():
                raise ValueError(f"tls_ca {path} is not a file (the PEM of the CA that signed the server's certificate)")
            self._credentials = grpc.ssl_channel_credentials(root_certificates=path.read_bytes())
        elif tls:
            self._credentials = grpc.ssl_channel_credentials()

    def _policy(self, rpc: str, request) -> RetryPolicy:
        if rpc in IDEMPOTENT_RPCS or (rpc == "RecordEvents" and all(e.event_id for e in request.events)):
            return self.retry
        return NO_RETRY

    @staticmethod
    def _search(query: str, k: int, user_id: str | None, filters: Filters | None, explain: bool,
                request_id: str, candidate_item_ids: Iterable[str] | None = None) -> pb.SearchRequest:
        return pb.SearchRequest(query=query, user_id=user_id or "", k=_k(k), filters=filters_to_pb(filters),
                                explain=explain, request_id=request_id,
                                candidate_item_ids=_candidates(candidate_item_ids))

    @staticmethod
    def _recommend(user_id: str | None, k: int, context: Iterable[Event], filters: Filters | None, explain: bool,
                   include_seen: bool, request_id: str) -> pb.RecommendRequest:
        return pb.RecommendRequest(user_id=user_id or "", k=_k(k), context=_events(context, "context"),
                                   filters=filters_to_pb(filters), explain=explain, include_seen=include_seen,
                                   request_id=request_id)

    @staticmethod
    def _similar(item_id: str, k: int, filters: Filters | None, explain: bool,
                 request_id: str, user_id: str | None = None) -> pb.SimilarItemsRequest:
        return pb.SimilarItemsRequest(item_id=item_id, k=_k(k), filters=filters_to_pb(filters), explain=explain,
                                      request_id=request_id, user_id=user_id or "")

    @staticmethod
    def _health_state(answer: health_pb2.HealthCheckResponse | grpc.RpcError) -> str:
        """One health check's outcome as a name: the serving status, or the code of an error that
        waiting can cure (the server not up yet, the check's deadline); any other error raises."""
        if isinstance(answer, grpc.RpcError):
            if answer.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise TandemError.from_rpc_error(answer, "Health/Check") from None
            return answer.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    def _serving_timeout(self, service: str, timeout: float, last: str) -> TandemError:
        return TandemError("DEADLINE_EXCEEDED", f"{self.addr} did not report {service or 'the server'} SERVING "
                           f"within {timeout:g}s (last: {last})", None, "Health/Check")


def _stream_failure(failed: list[Exception]) -> Exception:
    """What a stream the client cancelled raises: the refused element's error, saying that nothing
    was recorded, or the caller's iterator's own exception."""
    if not failed:
        return TandemError("CANCELLED", "the stream was cancelled before it ended; nothing of it was recorded",
                           None, "StreamEvents")
    exc = failed[0]
    if isinstance(exc, TandemError):
        return TandemError(exc.code, f"{exc.message}; nothing of this stream was recorded (the client cancelled "
                           "the call before the stream ended)", exc.field, "StreamEvents")
    return exc


#: sent as a refused stream's last message: an event the server refuses (empty ids), which makes
#: it refuse the whole stream, so that nothing of it is logged
_POISON = pb.Event()


async def _aiter(items: Iterable[Event]):
    for item in items:
        yield item


def _build(rpc: str, make):
    """Build a request; a value protobuf refuses becomes INVALID_ARGUMENT (the client's own checks
    raise TandemError naming the field already)."""
    try:
        return make()
    except TandemError as exc:
        exc.rpc = exc.rpc or rpc
        raise
    except (TypeError, ValueError) as exc:
        raise TandemError("INVALID_ARGUMENT", f"cannot build the {rpc} request: {exc}", None, rpc) from None


class TandemClient(_Base):
    """Blocking client. Thread-safe; one per process is enough (it multiplexes one channel).

    ``addr``: ``HOST:PORT``. ``timeout``: default deadline of a call in seconds (retries
    included). ``retry``: see :class:`RetryPolicy`. ``options``: extra gRPC channel options.
    """

    def __init__(self, addr: str = "127.0.0.1:50051", *, token: str | None = None,
                 tls_ca: str | Path | None = None, tls: bool = False, tls_server_name: str | None = None,
                 timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(),
                 options: Iterable[tuple[str, object]] = ()) -> None:
        super().__init__(addr, token=token, tls_ca=tls_ca, tls=tls, tls_server_name=tls_server_name,
                         timeout=timeout, retry=retry, options=options)
        if self._credentials is not None:
            self._channel = grpc.secure_channel(addr, self._credentials, options=self._options)
        else:
            self._channel = grpc.insecure_channel(addr, options=self._options)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._admin = pb_grpc.TandemAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> TandemClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc: str, method, request, timeout: float | None):
        attempts = _Attempts(self._policy(rpc, request), self.timeout if timeout is None else timeout, self._rng)
        while True:
            try:
                return method(request, timeout=attempts.next_timeout(), metadata=self._metadata)
            except grpc.RpcError as exc:
                wait = attempts.delay(exc.code())
                if wait is None:
                    raise TandemError.from_rpc_error(exc, rpc) from None
                time.sleep(wait)

    def search(self, query: str, *, k: int = 10, user_id: str | None = None, filters: Filters | None = None,
               explain: bool = False, request_id: str = "", candidate_item_ids: Iterable[str] | None = None,
               timeout: float | None = None) -> Results:
        """The top ``k`` items for a text query, personalised when ``user_id`` is given.

        ``candidate_item_ids`` (at most 1,000 distinct ids; default None: retrieve from the whole
        catalog): re-rank these items instead; only they come back, at most ``k``, in Tandem's
        order, with filters and the user's history applied. Ids the bundle does not know are
        skipped and counted in :attr:`Results.unknown_candidates`; more than 1,000 ids, a
        repeated or an empty one raise ``TandemError("INVALID_ARGUMENT")`` naming the field."""
        request = _build("Search", lambda: self._search(query, k, user_id, filters, explain, request_id,
                                                        candidate_item_ids))
        return results_from_pb(self._call("Search", self._stub.Search, request, timeout))

    def recommend(self, user_id: str | None, *, k: int = 10, context: Iterable[Event] = (),
                  filters: Filters | None = None, explain: bool = False, include_seen: bool = False,
                  request_id: str = "", timeout: float | None = None) -> Results:
        """The top ``k`` items for a user (its stored history plus this session's ``context``
        events); items the user interacted with are left out unless ``include_seen``."""
        request = _build("Recommend", lambda: self._recommend(user_id, k, context, filters, explain, include_seen,
                                                              request_id))
        return results_from_pb(self._call("Recommend", self._stub.Recommend, request, timeout))

    def similar_items(self, item_id: str, *, k: int = 10, filters: Filters | None = None, explain: bool = False,
                      request_id: str = "", timeout: float | None = None, user_id: str | None = None) -> Results:
        """The ``k`` items most similar to ``item_id`` (NOT_FOUND when the bundle lacks it); ``user_id``
        only assigns the asker an arm of the server's A/B experiment."""
        request = _build("SimilarItems", lambda: self._similar(item_id, k, filters, explain, request_id, user_id))
        return results_from_pb(self._call("SimilarItems", self._stub.SimilarItems, request, timeout))

    def record(self, events: Event | Iterable[Event], *, request_id: str = "",
               timeout: float | None = None) -> Recorded:
        """Log one event or a batch (at most 10,000) durably, all or nothing. Retried (like the
        reads) only when every event has an ``event_id``, which makes a repeat harmless: an event
        whose id is logged already counts in ``duplicates`` and is not logged again. Needs the token."""
        request = _build("RecordEvents", lambda: pb.RecordEventsRequest(events=_events(events), request_id=request_id))
        return recorded_from_pb(self._call("RecordEvents", self._stub.RecordEvents, request, timeout))

    def stream_events(self, events: Iterable[Event], *, timeout: float | None = None) -> Recorded:
        """Stream up to 100,000 events in one call, all or nothing; never retried. When an element
        is refused (by the client or the server) or the iterator raises, nothing of the stream is
        recorded. Needs the token."""
        failed: list[Exception] = []

        def messages():  # runs in gRPC's sending thread
            try:
                for i, e in enumerate(events):
                    yield _event(e, f"events[{i}]")
            except Exception as exc:
                failed.append(exc)
                # end the stream with a message the server refuses, so that it refuses the whole
                # stream (all or nothing). Cancelling instead races: the server can see a cancelled
                # stream's last message as its normal end and commit what came before it.
                yield _POISON

        t = self.timeout if timeout is None else timeout
        call = self._stub.StreamEvents.future(messages(), timeout=t, metadata=self._metadata)
        try:
            resp = call.result()
        except grpc.RpcError as exc:
            if failed:
                raise _stream_failure(failed) from None
            raise TandemError.from_rpc_error(exc, "StreamEvents") from None
        except BaseException:  # e.g. KeyboardInterrupt: cancel before the sending thread ends the stream
            call.cancel()
            raise
        if failed:  # cannot happen (the server refuses the poison message), but never report success
            raise _stream_failure(failed)
        return recorded_from_pb(resp)

    def get_item(self, item_id: str, *, timeout: float | None = None) -> Item:
        """A catalog item of the serving bundle (NOT_FOUND when it lacks it)."""
        request = _build("GetItem", lambda: pb.GetItemRequest(item_id=item_id))
        return item_from_pb(self._call("GetItem", self._stub.GetItem, request, timeout))

    def ping(self, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Echo ``payload``: the transport's latency floor."""
        request = _build("Ping", lambda: pb.PingRequest(payload=payload))
        return self._call("Ping", self._stub.Ping, request, timeout).payload

    def reload_bundle(self, version: str = "", *, timeout: float | None = None) -> Reloaded:
        """Load ``version`` ("" = whatever CURRENT names now); never retried. Needs the token."""
        request = _build("ReloadBundle", lambda: pb.ReloadBundleRequest(version=version))
        return reloaded_from_pb(self._call("ReloadBundle", self._admin.ReloadBundle, request, timeout))

    def status(self, *, timeout: float | None = None) -> Status:
        """The serving bundle, its counts, uptime and event-log position. Needs the token."""
        return status_from_pb(self._call("GetStatus", self._admin.GetStatus, pb.GetStatusRequest(), timeout))

    def upsert_items(self, items: Iterable[Item | dict], *, request_id: str = "",
                     timeout: float | None = None) -> CatalogChanged:
        """Add or replace catalog rows (at most 10,000; :class:`Item` or dicts of a catalog JSONL
        row), all or nothing: a bad row raises ``TandemError("INVALID_ARGUMENT")`` naming
        ``items[i].field``. Durable when it returns; searchable from the next call. Needs the token."""
        request = _build("UpsertItems", lambda: pb.UpsertItemsRequest(items=[item_to_pb(i) for i in items],
                                                                      request_id=request_id))
        return changed_from_pb(self._call("UpsertItems", self._admin.UpsertItems, request, timeout))

    def stream_upsert_items(self, items: Iterable[Item | dict], *, timeout: float | None = None) -> CatalogChanged:
        """:meth:`upsert_items` as a client stream (at most 100,000 rows, applied when it ends)."""
        t = self.timeout if timeout is None else timeout
        messages = [item_to_pb(i) for i in items]  # a row the client cannot convert fails before sending
        try:
            resp = self._admin.StreamUpsertItems(iter(messages), timeout=t, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise TandemError.from_rpc_error(exc, "StreamUpsertItems") from None
        return changed_from_pb(resp)

    def delete_items(self, item_ids: Iterable[str], *, request_id: str = "",
                     timeout: float | None = None) -> CatalogChanged:
        """Remove items (at most 10,000 ids): never returned again by any RPC. Needs the token."""
        request = _build("DeleteItems", lambda: pb.DeleteItemsRequest(item_ids=list(item_ids), request_id=request_id))
        return changed_from_pb(self._call("DeleteItems", self._admin.DeleteItems, request, timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health check: ``"SERVING"`` or ``"NOT_SERVING"`` (while draining).
        ``service``: "" (the server) or a service name such as ``"tandem.v1.Tandem"``."""
        resp = self._call("Health/Check", self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """Block until the health check answers SERVING (the server may not be started yet);
        DEADLINE_EXCEEDED after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=remaining,
                                          wait_for_ready=True)
                last = self._health_state(resp)
            except grpc.RpcError as exc:
                last = self._health_state(exc)
            if last == "SERVING":
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise self._serving_timeout(service, timeout, last)


class AsyncTandemClient(_Base):
    """The :class:`TandemClient` API as coroutines over ``grpc.aio``. Create it inside the
    running event loop and close it with ``await close()`` (or ``async with``)."""

    def __init__(self, addr: str = "127.0.0.1:50051", *, token: str | None = None,
                 tls_ca: str | Path | None = None, tls: bool = False, tls_server_name: str | None = None,
                 timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(),
                 options: Iterable[tuple[str, object]] = ()) -> None:
        super().__init__(addr, token=token, tls_ca=tls_ca, tls=tls, tls_server_name=tls_server_name,
                         timeout=timeout, retry=retry, options=options)
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(addr, self._credentials, options=self._options)
        else:
            self._channel = grpc.aio.insecure_channel(addr, options=self._options)
        self._stub = pb_grpc.TandemStub(self._channel)
        self._admin = pb_grpc.TandemAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncTandemClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: str, method, request, timeout: float | None):
        attempts = _Attempts(self._policy(rpc, request), self.timeout if timeout is None else timeout, self._rng)
        while True:
            try:
                return await method(request, timeout=attempts.next_timeout(), metadata=self._metadata)
            except grpc.RpcError as exc:
                wait = attempts.delay(exc.code())
                if wait is None:
                    raise TandemError.from_rpc_error(exc, rpc) from None
                await asyncio.sleep(wait)

    async def search(self, query: str, *, k: int = 10, user_id: str | None = None, filters: Filters | None = None,
                     explain: bool = False, request_id: str = "", candidate_item_ids: Iterable[str] | None = None,
                     timeout: float | None = None) -> Results:
        """See :meth:`TandemClient.search`."""
        request = _build("Search", lambda: self._search(query, k, user_id, filters, explain, request_id,
                                                        candidate_item_ids))
        return results_from_pb(await self._call("Search", self._stub.Search, request, timeout))

    async def recommend(self, user_id: str | None, *, k: int = 10, context: Iterable[Event] = (),
                        filters: Filters | None = None, explain: bool = False, include_seen: bool = False,
                        request_id: str = "", timeout: float | None = None) -> Results:
        """See :meth:`TandemClient.recommend`."""
        request = _build("Recommend", lambda: self._recommend(user_id, k, context, filters, explain, include_seen,
                                                              request_id))
        return results_from_pb(await self._call("Recommend", self._stub.Recommend, request, timeout))

    async def similar_items(self, item_id: str, *, k: int = 10, filters: Filters | None = None,
                            explain: bool = False, request_id: str = "", timeout: float | None = None,
                            user_id: str | None = None) -> Results:
        """See :meth:`TandemClient.similar_items`."""
        request = _build("SimilarItems", lambda: self._similar(item_id, k, filters, explain, request_id, user_id))
        return results_from_pb(await self._call("SimilarItems", self._stub.SimilarItems, request, timeout))

    async def record(self, events: Event | Iterable[Event], *, request_id: str = "",
                     timeout: float | None = None) -> Recorded:
        """See :meth:`TandemClient.record`."""
        request = _build("RecordEvents", lambda: pb.RecordEventsRequest(events=_events(events), request_id=request_id))
        return recorded_from_pb(await self._call("RecordEvents", self._stub.RecordEvents, request, timeout))

    async def stream_events(self, events: Iterable[Event] | AsyncIterable[Event], *,
                            timeout: float | None = None) -> Recorded:
        """See :meth:`TandemClient.stream_events`; ``events`` may also be an async iterable."""
        failed: list[Exception] = []

        async def messages():
            i = 0
            try:
                async for e in events if isinstance(events, AsyncIterable) else _aiter(events):
                    yield _event(e, f"events[{i}]")
                    i += 1
            except Exception as exc:
                failed.append(exc)
                yield _POISON  # the server refuses the whole stream (see TandemClient.stream_events)

        call = self._stub.StreamEvents(messages(), timeout=self.timeout if timeout is None else timeout,
                                       metadata=self._metadata)
        try:
            resp = await call
        except grpc.RpcError as exc:
            if failed:
                raise _stream_failure(failed) from None
            raise TandemError.from_rpc_error(exc, "StreamEvents") from None
        if failed:
            raise _stream_failure(failed)
        return recorded_from_pb(resp)

    async def get_item(self, item_id: str, *, timeout: float | None = None) -> Item:
        """See :meth:`TandemClient.get_item`."""
        request = _build("GetItem", lambda: pb.GetItemRequest(item_id=item_id))
        return item_from_pb(await self._call("GetItem", self._stub.GetItem, request, timeout))

    async def ping(self, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """See :meth:`TandemClient.ping`."""
        request = _build("Ping", lambda: pb.PingRequest(payload=payload))
        return (await self._call("Ping", self._stub.Ping, request, timeout)).payload

    async def reload_bundle(self, version: str = "", *, timeout: float | None = None) -> Reloaded:
        """See :meth:`TandemClient.reload_bundle`."""
        request = _build("ReloadBundle", lambda: pb.ReloadBundleRequest(version=version))
        return reloaded_from_pb(await self._call("ReloadBundle", self._admin.ReloadBundle, request, timeout))

    async def upsert_items(self, items: Iterable[Item | dict], *, request_id: str = "",
                           timeout: float | None = None) -> CatalogChanged:
        """See :meth:`TandemClient.upsert_items`."""
        request = _build("UpsertItems", lambda: pb.UpsertItemsRequest(items=[item_to_pb(i) for i in items],
                                                                      request_id=request_id))
        return changed_from_pb(await self._call("UpsertItems", self._admin.UpsertItems, request, timeout))

    async def delete_items(self, item_ids: Iterable[str], *, request_id: str = "",
                           timeout: float | None = None) -> CatalogChanged:
        """See :meth:`TandemClient.delete_items`."""
        request = _build("DeleteItems", lambda: pb.DeleteItemsRequest(item_ids=list(item_ids), request_id=request_id))
        return changed_from_pb(await self._call("DeleteItems", self._admin.DeleteItems, request, timeout))

    async def status(self, *, timeout: float | None = None) -> Status:
        """See :meth:`TandemClient.status`."""
        return status_from_pb(await self._call("GetStatus", self._admin.GetStatus, pb.GetStatusRequest(), timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """See :meth:`TandemClient.health`."""
        resp = await self._call("Health/Check", self._health.Check, health_pb2.HealthCheckRequest(service=service),
                                timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """See :meth:`TandemClient.wait_until_serving`."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                resp = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=remaining,
                                                wait_for_ready=True)
                last = self._health_state(resp)
            except grpc.RpcError as exc:
                last = self._health_state(exc)
            if last == "SERVING":
                return
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise self._serving_timeout(service, timeout, last)
