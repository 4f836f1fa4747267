"""Log setup shared by the coordinator, executor and simulator processes.

Two formats: ``text`` for people (the default) and ``json`` for log pipelines, one
object per line. Log lines about one workflow, step, task or executor carry their
ids as fields (``log.info(..., extra=fields(workflow_id=...))``); the JSON format
emits them as keys, so ``jq 'select(.workflow_id == "...")'`` follows one workflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from conveyor import tracing

from .settings import Kind, Option, Options

FORMATS = ("text", "json")

#: ``--log-level`` and ``--log-format`` of the coordinator and executor (:mod:`conveyor.settings`).
LOG_OPTIONS = Options(
    Option("log_level", Kind.TEXT, "INFO", "DEBUG, INFO, WARNING...", field=None, group="logging"),
    Option(
        "log_format",
        Kind.TEXT,
        "text",
        "text for people, or json: one object per line, with workflow/step/executor ids as fields",
        choices=FORMATS,
        field=None,
        group="logging",
    ),
)

#: The fields a log line may carry, in the order the JSON format writes them.
ID_FIELDS = ("workflow_id", "step_number", "step_name", "task_id", "executor_id", "shard", "attempt")

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the ids of what the line is about (None values are left out)."""
    unknown = set(values) - set(ID_FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; known: {', '.join(ID_FIELDS)}")
    return {name: value for name, value in values.items() if value is not None}


def escaped(text: str) -> str:
    """``text`` on one line: newlines, carriage returns, ANSI escapes and every other
    non-printable character written out (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """The ``text`` format, one record per line whatever its message holds.

    Messages quote what peers sent (executor ids, draining reasons, error messages):
    a newline in an executor's Draining.reason forged a whole coordinator log line, and
    an ANSI escape reached the operator's terminal. The message is escaped; a traceback,
    which is the process's own text, is appended as usual.
    """

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escaped(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the id fields, the trace and span
    ids of the current OpenTelemetry span (if any), and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        ids = tracing.current_ids()
        if ids is not None:  # written inside a span: the line joins its trace in a log pipeline
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str | None = None, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (default: $CONVEYOR_LOG_LEVEL or INFO) as ``text`` or ``json``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(
        level=(level or os.environ.get("CONVEYOR_LOG_LEVEL", "INFO")).upper(), handlers=[handler]
    )
    # grpc and the HTTP stacks are chatty at INFO.
    for noisy in ("httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, the same for every process."""
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING... (default INFO or $CONVEYOR_LOG_LEVEL)"
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text for people (default) or json: one object per line, with workflow/step/executor ids",
    )
