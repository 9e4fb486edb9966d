"""The life of a fake HTTP server of the tests (the fake EWS and Graph servers): a
ThreadingHTTPServer on 127.0.0.1 in a thread, plain or TLS, started and stopped, its open
connections tracked so that stop() cuts them (a client blocked on a read wakes up)."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HOST = "127.0.0.1"


class ThreadedHTTPFake:
    """What a fake server shares.  A subclass sets `ssl_context` (or None), `_lock` and
    `_connections` in its __init__, calls _serve() from its start(), and has its handler
    call _track(conn, True/False) as connections come and go."""

    ssl_context: ssl.SSLContext | None
    _lock: threading.RLock
    _connections: set[socket.socket]
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    port: int

    def _serve(self, handler: type[BaseHTTPRequestHandler], name: str) -> str:
        """Start serving with a subclass of `handler` whose `fake` is this server, in a
        thread called `name`; -> the server's scheme://host:port."""
        handler_class = type("Handler", (handler,), {"fake": self})
        self._server = ThreadingHTTPServer((HOST, 0), handler_class)
        self._server.daemon_threads = True
        if self.ssl_context is not None:
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True
            )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=name, daemon=True
        )
        self._thread.start()
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def start(self) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
