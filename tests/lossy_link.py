"""A loopback TCP relay in front of a real server that can lose one answer on the wire: the
request reaches the server, which does the work, but its answer never reaches the client, whose
connection is cut instead (what a broker killed between its write and its reply, or a network
fault, does). Tests use it to make that case happen every time instead of once in a while."""

from __future__ import annotations

import socket
import threading

__all__ = ["LossyLink"]


class LossyLink:
    """Relays ``127.0.0.1:port`` -> ``127.0.0.1:target``, one pair of threads per connection.
    :meth:`lose_answer_to` marks the next request whose bytes contain ``marker``: it is forwarded,
    and the first answer bytes on that connection are dropped and both sides closed; :attr:`lost`
    is set then."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._marker: bytes | None = None
        self._mark_lock = threading.Lock()
        self.lost = threading.Event()
        threading.Thread(target=self._accept, name="lossy-link", daemon=True).start()

    def lose_answer_to(self, marker: bytes) -> None:
        with self._mark_lock:
            self._marker = marker
            self.lost.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            cut = threading.Event()  # this connection's marked request went up: lose its answer
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, up, cut, (client, upstream)),
                                 daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool, cut: threading.Event,
              both: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(65536):
                if up:
                    with self._mark_lock:
                        if self._marker is not None and self._marker in data:
                            self._marker = None
                            cut.set()
                elif cut.is_set():  # the marked request's answer: drop it, cut the client off
                    self.lost.set()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in both:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._server.close()
