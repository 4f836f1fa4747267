"""Where the CLI's results go: one :class:`Output`, JSON for scripts or tables for people.

The CLI picks the output once, from ``--json``, and every command hands it what it got;
no command knows which one it is. :class:`TableOutput` draws with ``rich`` (the ``cli``
extra), imported when a table output is made rather than when this module is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.json_format import MessageToDict

from conveyor.v1 import admin_service_pb2

from .models import BulkCancel, Explanation, Purge, SignalSent, Started, Workflow, WorkflowStatus

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["JsonOutput", "Output", "ProgressBar", "TableOutput", "message_dict", "output_for", "visible"]


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with every non-printable character (ANSI escapes, carriage returns, bidi
    overrides; newlines and tabs too unless ``multiline``) written out as ``\\x1b``-style escapes."""
    if text.isprintable():
        return text
    kept = "\n\t" if multiline else ""
    return "".join(c if c.isprintable() or c in kept else repr(c)[1:-1] for c in text)


def print_json(value: Any) -> None:
    """``value`` as indented JSON; dataclasses become objects, datetimes ISO 8601 strings."""
    print(json.dumps(_plain(value), indent=2, default=_json_default))


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def message_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as JSON-ready data, with the .proto's field names."""
    return MessageToDict(message, preserving_proto_field_name=True)


class ProgressBar(Protocol):
    def advance(self) -> None: ...


class Output(Protocol):
    """What each command shows; one method per kind of result."""

    def started(self, started: Started) -> None: ...
    def workflow(self, workflow: Workflow) -> None: ...
    def workflow_page(self, workflows: Sequence[Workflow], next_page_token: str) -> None: ...
    def workflows(self, workflows: Sequence[Workflow]) -> None: ...
    def counts(self, by_status: Mapping[WorkflowStatus, int]) -> None: ...
    def explanation(self, explanation: Explanation) -> None: ...
    def signal_sent(self, sent: SignalSent) -> None: ...
    def bulk_cancel(self, outcome: BulkCancel, *, dry_run: bool) -> None: ...
    def purge(self, outcome: Purge, *, dry_run: bool) -> None: ...
    def failed_tasks(self, failed: int) -> None: ...
    def epoch_bumped(self, response: admin_service_pb2.BumpEpochResponse) -> None: ...
    def cleared(self, what: str, cleared: int, cancelled_workflows: int) -> None: ...
    def diagnosis(self, report: admin_service_pb2.DiagnoseResponse, shard: int | None) -> None: ...
    def progress(self, total: int) -> Any:
        """A context manager of a :class:`ProgressBar` for ``total`` items (on stderr)."""
        ...


class _NoProgress:
    def advance(self) -> None:
        pass


class JsonOutput:
    """Indented JSON on stdout, one document per command; no progress bars."""

    def started(self, started: Started) -> None:
        print_json(started)

    def workflow(self, workflow: Workflow) -> None:
        print_json(workflow)

    def workflow_page(self, workflows: Sequence[Workflow], next_page_token: str) -> None:
        print_json({"workflows": list(workflows), "next_page_token": next_page_token})

    def workflows(self, workflows: Sequence[Workflow]) -> None:
        print_json(list(workflows))

    def counts(self, by_status: Mapping[WorkflowStatus, int]) -> None:
        print_json({status.value: count for status, count in by_status.items()})

    def explanation(self, explanation: Explanation) -> None:
        print_json(explanation)

    def signal_sent(self, sent: SignalSent) -> None:
        print_json(sent)

    def bulk_cancel(self, outcome: BulkCancel, *, dry_run: bool) -> None:
        print_json({**asdict(outcome), "dry_run": dry_run})

    def purge(self, outcome: Purge, *, dry_run: bool) -> None:
        print_json({**asdict(outcome), "dry_run": dry_run})

    def failed_tasks(self, failed: int) -> None:
        print_json({"failed_tasks": failed})

    def epoch_bumped(self, response: admin_service_pb2.BumpEpochResponse) -> None:
        print_json(message_dict(response))

    def cleared(self, what: str, cleared: int, cancelled_workflows: int) -> None:
        print_json({"cleared": cleared, "cancelled_workflows": cancelled_workflows})

    def diagnosis(self, report: admin_service_pb2.DiagnoseResponse, shard: int | None) -> None:
        print_json(message_dict(report))

    @contextmanager
    def progress(self, total: int) -> Iterator[ProgressBar]:
        yield _NoProgress()


class TableOutput:
    """Tables and sentences for a person; a progress bar on stderr when it is a terminal."""

    def __init__(self) -> None:
        # Imported here, not with the module: JSON output and `--help` do without rich, and
        # a missing `cli` extra is reported (by conveyor.cli) before any request is made.
        from rich.console import Console

        from . import render

        self._render = render
        self._console = Console

    def started(self, started: Started) -> None:
        print(started.workflow_id)

    def workflow(self, workflow: Workflow) -> None:
        self._render.workflow(self._console(), workflow)

    def workflow_page(self, workflows: Sequence[Workflow], next_page_token: str) -> None:
        console = self._console()
        self._render.workflow_list(console, workflows)
        if next_page_token:
            console.print(f"more: add --page-token {next_page_token}", markup=False, highlight=False)

    def workflows(self, workflows: Sequence[Workflow]) -> None:
        self._render.workflow_list(self._console(), workflows)

    def counts(self, by_status: Mapping[WorkflowStatus, int]) -> None:
        self._render.counts(self._console(), by_status)

    def explanation(self, explanation: Explanation) -> None:
        self._render.explanation(self._console(), explanation)

    def signal_sent(self, sent: SignalSent) -> None:
        if sent.duplicate:
            print(f"signal {sent.name!r} was already sent with this idempotency key; nothing new sent")
        elif sent.delivered:
            print(f"signal {sent.name!r} delivered: workflow {sent.workflow_id} was waiting for it")
        else:
            print(
                f"signal {sent.name!r} buffered: workflow {sent.workflow_id} gets it at its next "
                f"wait_for_signal({sent.name!r})"
            )

    def bulk_cancel(self, outcome: BulkCancel, *, dry_run: bool) -> None:
        verb = "would cancel" if dry_run else "cancelled"
        count = outcome.matched if dry_run else outcome.cancelled
        print(f"{verb} {count} running workflow(s)")
        if outcome.sample_workflow_ids:
            print(visible("oldest: " + ", ".join(outcome.sample_workflow_ids[:5])))

    def purge(self, outcome: Purge, *, dry_run: bool) -> None:
        verb = "would purge" if dry_run else "purged"
        count = outcome.matched if dry_run else outcome.purged
        print(f"{verb} {count} finished workflow(s) and their journals")
        if outcome.sample_workflow_ids:
            print(visible("first finished: " + ", ".join(outcome.sample_workflow_ids[:5])))

    def failed_tasks(self, failed: int) -> None:
        print(f"failed {failed} pending task(s)")

    def epoch_bumped(self, response: admin_service_pb2.BumpEpochResponse) -> None:
        print(f"epoch is now {response.epoch}; {response.draining_executors} executor(s) draining")

    def cleared(self, what: str, cleared: int, cancelled_workflows: int) -> None:
        print(f"cleared {cleared} {what}; cancelled {cancelled_workflows} workflow(s)")

    def diagnosis(self, report: admin_service_pb2.DiagnoseResponse, shard: int | None) -> None:
        self._render.diagnosis(self._console(), report, shard)

    @contextmanager
    def progress(self, total: int) -> Iterator[ProgressBar]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("waiting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console(stderr=True),
            disable=not sys.stderr.isatty(),
        ) as progress:
            yield _RichBar(progress, progress.add_task("workflows", total=total))


class _RichBar:
    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self) -> None:
        self._progress.advance(self._task)


def output_for(*, json: bool) -> Output:
    """The output ``--json`` asks for."""
    return JsonOutput() if json else TableOutput()
