"""Bearer-token check for event ingestion and the admin service, as a gRPC server interceptor.

Search, Recommend, SimilarItems, GetItem, Ping, health and reflection stay open: they only read.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

__all__ = ["AuthInterceptor", "PROTECTED_PREFIXES"]

#: Full method names (or service prefixes) that need ``authorization: Bearer <token>``.
PROTECTED_PREFIXES: tuple[str, ...] = (
    "/tandem.v1.Tandem/RecordEvents",
    "/tandem.v1.Tandem/StreamEvents",
    "/tandem.v1.TandemAdmin/",
)

_DENIED = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>' (tandem ... --token T)"
_SEVERAL = "{n} authorization headers: send exactly one, 'authorization: Bearer <token>'"


class AuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries ``authorization: Bearer <token>``, once
    (a call with several ``authorization`` headers is refused whatever they hold).

    ``on_denied(method)`` is called for each refused call (the server counts them in metrics).
    """

    def __init__(self, token: str, on_denied: Callable[[str], None] | None = None) -> None:
        if not token:
            raise ValueError("--token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self._on_denied = on_denied
        self._deny = {_DENIED: self._handlers(_DENIED)}

    @staticmethod
    def _handlers(message: str) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        def deny(request, context):  # noqa: ARG001 - the signature gRPC expects
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.unary_unary_rpc_method_handler(deny), grpc.stream_unary_rpc_method_handler(deny)

    def _refusal(self, metadata) -> str | None:
        """Why the call is refused, or None when it carries exactly one header with the token."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) > 1:  # which one would count? A proxy may have added one: refuse them all
            return _SEVERAL.format(n=len(values))
        if not values:
            return _DENIED
        got = values[0].encode() if isinstance(values[0], str) else bytes(values[0])
        return None if hmac.compare_digest(got, self._expected) else _DENIED

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(PROTECTED_PREFIXES):
            refusal = self._refusal(handler_call_details.invocation_metadata)
            if refusal is not None:
                if self._on_denied is not None:
                    self._on_denied(method)
                unary, stream = self._deny.get(refusal) or self._handlers(refusal)
                return stream if method.endswith("/StreamEvents") else unary
        return continuation(handler_call_details)
