"""Database faults a test can switch on and off in-process.

* :class:`TcpProxy`: a TCP relay in front of PostgreSQL. ``break_()`` cuts every
  relayed connection and refuses new ones (they are accepted and closed at once, as a
  server that just died), ``heal()`` relays again. Only the connections through the
  proxy suffer, so other tests sharing the PostgreSQL server are untouched.
* :class:`SqliteLock`: another connection holding the SQLite write lock, as a second
  process would.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
from pathlib import Path

from sqlalchemy.engine import make_url


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._broken = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp proxy", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy in front of the server of ``url``, and the same URL pointing through it."""
        parsed = make_url(url)
        proxy = cls(parsed.host or "127.0.0.1", parsed.port or 5432)
        return proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def break_(self) -> None:
        self._broken.set()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def heal(self) -> None:
        self._broken.clear()

    def close(self) -> None:
        self._closed = True
        self.break_()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._broken.is_set():
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class SqliteLock:
    """Holds the write lock of a SQLite database file between ``take()`` and ``release()``."""

    def __init__(self, url: str) -> None:
        database = make_url(url).database
        assert database
        self.path = Path(database)
        self._connection: sqlite3.Connection | None = None

    def take(self) -> None:
        self._connection = sqlite3.connect(
            self.path, isolation_level=None, timeout=60, check_same_thread=False
        )
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None
