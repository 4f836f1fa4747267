"""How the CLI's table output draws what the client returns, with rich.

Every string that comes from the coordinator (ids, names, reasons, error messages) was
chosen by someone else: an executor id like ``sec-[/]-x`` is valid, and rendered as
rich markup it crashed ``get`` and ``admin diagnose`` with a MarkupError; an ANSI escape
in a cancel reason rewrote the operator's terminal. So such text reaches the console
only through :func:`cell` (a :class:`~rich.text.Text`, never parsed as markup) or
:func:`shown` (markup-escaped), both with control characters written out by
:func:`~conveyor.client.output.visible`. Markup appears only in the literals of this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from conveyor.v1 import admin_service_pb2

from .models import Explanation, Workflow, WorkflowStatus
from .output import visible

STATUS_STYLE = {
    WorkflowStatus.RUNNING: "cyan",
    WorkflowStatus.COMPLETED: "green",
    WorkflowStatus.FAILED: "red",
    WorkflowStatus.CANCELLED: "yellow",
}


def cell(text: str, *, style: str = "") -> Text:
    """Foreign text for a table cell or a print: shown as it is, never read as markup."""
    return Text(visible(text), style=style)


def shown(text: str) -> str:
    """Foreign text to embed in a markup string."""
    return escape(visible(text))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _status(status: WorkflowStatus) -> str:
    return f"[{STATUS_STYLE[status]}]{status.value}[/]"


def _heading(workflow: Workflow) -> str:
    status = _status(workflow.status)
    return f"[bold]{shown(workflow.name)}[/bold] {shown(workflow.id)}  status: [bold]{status}[/]"


def workflow(console: Console, workflow: Workflow) -> None:
    """One workflow with its steps, timings and errors."""
    console.print(_heading(workflow))
    started, finished = _when(workflow.created_at), _when(workflow.completed_at)
    console.print(f"shard {workflow.shard}, started {started}, finished {finished}")
    if workflow.error:
        console.print(Text.assemble(("error: ", "red"), visible(workflow.error, multiline=True)))
    if workflow.result is not None:
        console.print(f"result: {json.dumps(workflow.result)[:2000]}", markup=False, highlight=False)
    table = Table("#", "kind", "name", "status", "attempt", "queued s", "ran s", "executor", "error")
    for step in workflow.steps:
        queued = ran = ""
        if step.created_at and step.started_at:
            queued = f"{(step.started_at - step.created_at).total_seconds():.2f}"
        if step.started_at and step.completed_at:
            ran = f"{(step.completed_at - step.started_at).total_seconds():.2f}"
        table.add_row(
            str(step.number),
            cell(step.kind),
            cell(step.name),
            cell(step.status),
            str(step.attempt),
            queued,
            ran,
            cell(step.executor_id),
            cell(step.error[:80]),
        )
    if workflow.steps:
        console.print(table)
    if workflow.parent_workflow_id:
        console.print(
            f"child of {workflow.parent_workflow_id} (its step {workflow.parent_step_number})",
            markup=False,
            highlight=False,
        )
    if workflow.children:
        console.print(f"children ({len(workflow.children)}):", markup=False, highlight=False)
        for child in workflow.children[:50]:
            console.print(
                f"  step {child.parent_step_number}: {child.workflow_id} {child.name} {child.status.value}",
                markup=False,
                highlight=False,
            )
        if len(workflow.children) > 50:
            console.print(f"  ... and {len(workflow.children) - 50} more", markup=False, highlight=False)


def workflow_list(console: Console, workflows: Iterable[Workflow]) -> int:
    """A table of workflows (without steps); returns how many rows it has."""
    table = Table("id", "name", "status", "shard", "started", "finished", "steps", "error")
    for item in workflows:
        table.add_row(
            cell(item.id),
            cell(item.name),
            _status(item.status),
            str(item.shard),
            _when(item.created_at),
            _when(item.completed_at),
            str(item.step_count),
            cell(item.error[:60]),
        )
    if table.row_count:
        console.print(table)
    else:
        console.print("no workflow matches")
    return table.row_count


def counts(console: Console, by_status: Mapping[WorkflowStatus, int]) -> None:
    table = Table("status", "workflows")
    for status, count in by_status.items():
        table.add_row(_status(status), str(count))
    table.add_row("[bold]total[/bold]", f"[bold]{sum(by_status.values())}[/bold]")
    console.print(table)


def explanation(console: Console, explanation: Explanation) -> None:
    workflow = explanation.workflow
    console.print(_heading(workflow))
    if not explanation.steps:
        console.print(cell(explanation.summary), highlight=False)
        return
    waiting = len(explanation.steps)
    console.print(f"running; waiting for {waiting} step{'s' if waiting > 1 else ''}:")
    for step in explanation.steps:
        console.print(cell(f"  - {step.text}"), highlight=False)


def diagnosis(console: Console, report: admin_service_pb2.DiagnoseResponse, shard: int | None) -> None:
    statuses = ", ".join(f"{shown(k)} {v}" for k, v in sorted(report.workflows_by_status.items())) or "none"
    console.print(
        f"epoch {report.epoch}, {report.shard_count} shards; workflows: {statuses}; "
        f"replay queue {report.replay_queue_depth}; stale results rejected {report.rejected_stale_results}"
    )
    executors = Table("executor", "state", "epoch", "shards", "capacity", "claimed", "last heartbeat")
    for info in report.executors:
        executors.add_row(
            cell(info.executor_id),
            cell(info.state),
            str(info.epoch),
            shard_ranges(info.shards),
            str(info.capacity),
            str(info.claimed_tasks),
            f"{info.since_last_heartbeat.ToTimedelta().total_seconds():.1f}s ago",
        )
    console.print(executors if executors.row_count else "no executor is connected")
    shards = Table("shard", "queued", "delayed", "claimed", "oldest queued", "replay", "leased by")
    for stats in report.shards:
        busy = stats.queued_tasks or stats.delayed_tasks or stats.claimed_tasks or stats.replay_queue_depth
        if (shard is None and busy) or stats.shard == shard:
            age = (
                stats.oldest_queued_age.ToTimedelta().total_seconds()
                if stats.HasField("oldest_queued_age")
                else None
            )
            shards.add_row(
                str(stats.shard),
                str(stats.queued_tasks),
                str(stats.delayed_tasks),
                str(stats.claimed_tasks),
                f"{age:.1f}s" if age is not None else "-",
                str(stats.replay_queue_depth),
                cell(stats.executor_id or "none"),
            )
    console.print(shards if shards.row_count else "no shard has queued, claimed or delayed work")
    if not report.violations:
        console.print("[green]invariants hold[/green]")
    for violation in report.violations:
        console.print(
            f"[red]{shown(violation.kind)}[/red] ({violation.count}): {shown(violation.description)}"
        )
        console.print(cell("  e.g. " + ", ".join(violation.workflow_ids[:5])))


def shard_ranges(shards: Iterable[int]) -> str:
    """Compact shard lists: 0-24,50."""
    parts: list[str] = []
    for shard in sorted(shards):
        if parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == shard - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{shard}"
        elif parts and "-" not in parts[-1] and int(parts[-1]) == shard - 1:
            parts[-1] = f"{parts[-1]}-{shard}"
        else:
            parts.append(str(shard))
    return ",".join(parts) or "-"
