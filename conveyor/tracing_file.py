"""A span exporter writing JSON lines to a file: ``CONVEYOR_OTEL_EXPORTER=file:PATH``.

For a look at the spans of a local run without a collector, and for the tests that follow
one trace across processes. Needs the OpenTelemetry SDK (the ``[otel]`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each span as one line of JSON (the SDK's own ``to_json``) in a single write, so
    several processes can share one file without their lines interleaving."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._fd < 0:
            return SpanExportResult.FAILURE
        for span in spans:
            os.write(self._fd, (span.to_json(indent=None) + "\n").encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
