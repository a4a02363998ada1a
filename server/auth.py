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


class AuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries ``authorization: Bearer <token>``.

    ``on_denied(method)`` is called for each refused call (the server counts them in metrics).
    """

    def __init__(self, token: str, on_denied: Callable[[str], None] | None = None) -> None:
        if not token:
            raise ValueError("--token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self._on_denied = on_denied

        def deny(request, context):  # noqa: ARG001 - the signature gRPC expects
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def _allowed(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(PROTECTED_PREFIXES) and not self._allowed(handler_call_details.invocation_metadata):
            if self._on_denied is not None:
                self._on_denied(method)
            return self._deny_stream if method.endswith("/StreamEvents") else self._deny_unary
        return continuation(handler_call_details)
