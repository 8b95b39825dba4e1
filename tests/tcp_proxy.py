"""A tiny TCP proxy on loopback that can lose a server's answer: real sockets, one thread per direction.

``CuttingProxy(host, port)`` forwards every connection to the server. Armed
with ``cut_after(marker)``, the next time a client sends bytes containing
``marker`` (``b"COMMIT"``, ``b"INSERT INTO"``) the proxy forwards them, waits
for the server's answer, swallows it and closes both sockets: the server
has done the work, the client only sees its connection drop. That is the
moment a retried call must not do the work twice.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

__all__ = ["CuttingProxy"]


class CuttingProxy:
    """Forwards 127.0.0.1:``port`` to ``(host, server_port)``; cuts one exchange when armed."""

    def __init__(self, host: str, server_port: int) -> None:
        self.server = (host, server_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self.cuts = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, marker: bytes) -> None:
        """Arm: lose the server's answer to the next client message containing ``marker`` (once)."""
        with self._lock:
            self._marker = marker

    def _take_marker(self, data: bytes) -> bool:
        with self._lock:
            if self._marker is not None and self._marker in data:
                self._marker = None
                self.cuts += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.server, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            cut = threading.Event()
            threading.Thread(target=self._client_to_server, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(upstream, client, cut), daemon=True).start()

    def _client_to_server(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self._take_marker(data):
                    cut.set()  # the answer to what follows is the one to lose
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _server_to_client(self, upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                if cut.is_set():
                    break  # the server answered: it has done the work; the client never hears of it
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        _close(self.listener)
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
