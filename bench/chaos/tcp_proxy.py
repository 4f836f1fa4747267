"""A TCP relay in front of a database server that fails on demand: for fault tests and chaos runs.

Only the connections through the proxy suffer, so other users of the same server are untouched.
Two kinds of failure, as the network and the server produce them:

* :meth:`TcpProxy.break_`: every relayed connection is cut and new ones are accepted and closed
  at once, as a server that just died; the client sees resets.
* :meth:`TcpProxy.blackhole`: data in either direction is read and dropped, new connections are
  accepted and never answered; nothing is reset, so the client sees a silent network.

:meth:`TcpProxy.heal` ends either: the connections the failure left (their protocol state is
lost) are closed, and new ones are relayed again.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from sqlalchemy.engine import make_url


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._broken = threading.Event()
        self._blackholed = threading.Event()
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
        self._close_relayed()

    def blackhole(self) -> None:
        self._blackholed.set()

    def heal(self) -> None:
        self._close_relayed()
        self._broken.clear()
        self._blackholed.clear()

    def close(self) -> None:
        self._closed = True
        self.break_()
        _close(self._listener)

    def _close_relayed(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._broken.is_set():
                _close(client)
                continue
            with self._lock:
                self._sockets.add(client)
            if self._blackholed.is_set():
                threading.Thread(target=_swallow, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.add(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._blackholed.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _swallow(source: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while source.recv(65536):
            pass


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
