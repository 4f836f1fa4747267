"""Serving a process's Prometheus metrics over HTTP, the same way for the coordinator and executors."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry


def export(registry: CollectorRegistry, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serve ``registry`` at ``http://host:port/metrics`` from a thread.

    Returns the bound port (useful with port 0) and the function that stops serving.
    """
    server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return int(server.server_address[1]), stop
