"""Client commands of the ``conveyor`` CLI: start and inspect workflows, operate the queue.

Output is a human-readable table by default and JSON with ``--json``. Exit codes:
0 success, 1 the coordinator refused the request, 2 bad usage, 3 not found,
4 the coordinator is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from conveyor.errors import InvalidArgument, NotFound, RpcError, Unavailable

from .client import DEFAULT_TARGET, AsyncClient
from .models import Workflow

EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 1, 2, 3, 4

Command = Callable[[AsyncClient, argparse.Namespace], Awaitable[Any]]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        default=DEFAULT_TARGET,
        metavar="HOST:PORT",
        help="coordinator address (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")


def _shard_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--shard", type=int, help="act on this shard only")
    target.add_argument("--all", action="store_true", help="act on every shard")
    parser.add_argument("--limit", type=int, default=0, help="act on at most this many (default: no limit)")
    parser.add_argument("--reason", default="", help="recorded on every affected step or workflow")


def add_commands(subparsers: Any) -> None:
    """Mount ``start``, ``get`` and ``admin ...`` on the ``conveyor`` parser."""
    start = subparsers.add_parser(
        "start",
        help="start a workflow and print its id",
        description='Start a workflow.\n\nexample:\n  conveyor start research --args \'{"topic": "tides"}\'',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument("name", help="registered workflow name")
    start.add_argument("--args", default="", help="JSON object (keyword arguments) or array (positional)")
    start.add_argument(
        "--idempotency-key", default="", help="a repeated key returns the first workflow instead"
    )
    _common(start)
    start.set_defaults(command=_start)

    get = subparsers.add_parser(
        "get",
        help="show a workflow and its steps",
        description="Show a workflow, its result or error, and its steps with timings.\n\n"
        "example:\n  conveyor get 3f2a... --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("workflow_id")
    get.add_argument("--wait", action="store_true", help="wait for the workflow to finish first")
    _common(get)
    get.set_defaults(command=_get)

    admin = subparsers.add_parser("admin", help="operator actions and diagnosis").add_subparsers(
        dest="admin_command", required=True, metavar="ACTION"
    )
    fail = admin.add_parser(
        "fail-pending",
        help="fail queued tasks so their workflows finish as failures",
        description="Fail queued (unclaimed) tasks; each workflow sees its step fail.\n\n"
        "example:\n  conveyor admin fail-pending --shard 17 --reason 'poisoned prompt'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _shard_arguments(fail)
    _common(fail)
    fail.set_defaults(command=_fail_pending)

    bump = admin.add_parser(
        "bump-epoch",
        help="drain every running executor (they finish, report and exit)",
        description="Start a new epoch: executors of older epochs stop claiming, report what they hold "
        "and exit 0. Executors started afterwards join the new epoch.\n\n"
        "example:\n  conveyor admin bump-epoch --reason 'deploy v2'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bump.add_argument("--reason", default="")
    _common(bump)
    bump.set_defaults(command=_bump_epoch)

    for name, summary, command in (
        (
            "clear-replay-queue",
            "remove replay-queue entries, cancelling their workflows",
            _clear_replay_queue,
        ),
        (
            "clear-task-queue",
            "remove tasks (queued and claimed), cancelling their workflows",
            _clear_task_queue,
        ),
    ):
        clear = admin.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.\n\nexample:\n  conveyor admin {name} --shard 3",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _shard_arguments(clear)
        _common(clear)
        clear.set_defaults(command=command)

    diagnose = admin.add_parser(
        "diagnose",
        help="queue depths, executors, leases and the invariant check",
        description="Per-shard queue depth and oldest task age, the replay queue, live executors with "
        "their shards and epochs, and every invariant violation.\n\n"
        "example:\n  conveyor admin diagnose --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diagnose.add_argument("--shard", type=int, help="show only this shard's row")
    _common(diagnose)
    diagnose.set_defaults(command=_diagnose)


def run(args: argparse.Namespace) -> int:
    command: Command = args.command

    async def call() -> Any:
        async with AsyncClient(args.coordinator, timeout=args.timeout) as client:
            return await command(client, args)

    try:
        asyncio.run(call())
    except NotFound as error:
        _fail(error.message)
        return EXIT_NOT_FOUND
    except Unavailable as error:
        _fail(
            f"cannot reach the coordinator at {args.coordinator}: {error.message} "
            "(is it running? is --coordinator right?)"
        )
        return EXIT_UNAVAILABLE
    except InvalidArgument as error:
        _fail(error.message)
        return EXIT_USAGE
    except RpcError as error:
        _fail(error.message)
        return EXIT_REFUSED
    return 0


def _fail(message: str) -> None:
    print(f"conveyor: {message}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


async def _start(client: AsyncClient, args: argparse.Namespace) -> None:
    started = await client.start_workflow(args.name, args.args, idempotency_key=args.idempotency_key)
    if args.json:
        _print_json({"workflow_id": started.workflow_id, "already_existed": started.already_existed})
    else:
        print(started.workflow_id)


async def _get(client: AsyncClient, args: argparse.Namespace) -> None:
    if args.wait:
        await client.wait(args.workflow_id)
    workflow = await client.get_workflow(args.workflow_id, include_steps=True)
    if args.json:
        _print_json(_workflow_dict(workflow))
        return
    console = Console()
    console.print(f"[bold]{workflow.name}[/bold] {workflow.id}  status: [bold]{workflow.status.value}[/bold]")
    console.print(
        f"shard {workflow.shard}, started {workflow.created_at}, finished {workflow.completed_at or '-'}"
    )
    if workflow.error:
        console.print(f"[red]error:[/red] {workflow.error}")
    if workflow.result is not None:
        console.print(f"result: {json.dumps(workflow.result)[:2000]}")
    table = Table("#", "kind", "name", "status", "attempt", "queued s", "ran s", "executor", "error")
    for step in workflow.steps:
        queued = ran = ""
        if step.created_at and step.started_at:
            queued = f"{(step.started_at - step.created_at).total_seconds():.2f}"
        if step.started_at and step.completed_at:
            ran = f"{(step.completed_at - step.started_at).total_seconds():.2f}"
        table.add_row(
            str(step.number),
            step.kind,
            step.name,
            step.status,
            str(step.attempt),
            queued,
            ran,
            step.executor_id,
            step.error[:80],
        )
    console.print(table)


def _workflow_dict(workflow: Workflow) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(workflow)


async def _fail_pending(client: AsyncClient, args: argparse.Namespace) -> None:
    failed = await client.fail_pending_tasks(
        None if args.all else args.shard, limit=args.limit, reason=args.reason
    )
    _print_json({"failed_tasks": failed}) if args.json else print(f"failed {failed} pending task(s)")


async def _bump_epoch(client: AsyncClient, args: argparse.Namespace) -> None:
    response = await client.bump_epoch(args.reason)
    if args.json:
        _print_json({"epoch": response.epoch, "draining_executors": response.draining_executors})
    else:
        print(f"epoch is now {response.epoch}; {response.draining_executors} executor(s) draining")


async def _clear_replay_queue(client: AsyncClient, args: argparse.Namespace) -> None:
    response = await client.clear_replay_queue(
        None if args.all else args.shard, limit=args.limit, reason=args.reason
    )
    _report_clear(args, "replay-queue entries", response.cleared_entries, response.cancelled_workflows)


async def _clear_task_queue(client: AsyncClient, args: argparse.Namespace) -> None:
    response = await client.clear_task_queue(
        None if args.all else args.shard, limit=args.limit, reason=args.reason
    )
    _report_clear(args, "tasks", response.cleared_tasks, response.cancelled_workflows)


def _report_clear(args: argparse.Namespace, what: str, cleared: int, cancelled: int) -> None:
    if args.json:
        _print_json({"cleared": cleared, "cancelled_workflows": cancelled})
    else:
        print(f"cleared {cleared} {what}; cancelled {cancelled} workflow(s)")


async def _diagnose(client: AsyncClient, args: argparse.Namespace) -> None:
    report = await client.diagnose()
    if args.json:
        _print_json(MessageToDict(report, preserving_proto_field_name=True))
        return
    console = Console()
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.workflows_by_status.items())) or "none"
    console.print(
        f"epoch {report.epoch}, {report.shard_count} shards; workflows: {statuses}; "
        f"replay queue {report.replay_queue_depth}; stale results rejected {report.rejected_stale_results}"
    )
    executors = Table("executor", "state", "epoch", "shards", "capacity", "claimed", "last heartbeat")
    for info in report.executors:
        executors.add_row(
            info.executor_id,
            info.state,
            str(info.epoch),
            _ranges(info.shards),
            str(info.capacity),
            str(info.claimed_tasks),
            f"{info.since_last_heartbeat.ToTimedelta().total_seconds():.1f}s ago",
        )
    console.print(executors)
    shards = Table("shard", "queued", "delayed", "claimed", "oldest queued", "replay", "leased by")
    for stats in report.shards:
        busy = stats.queued_tasks or stats.delayed_tasks or stats.claimed_tasks or stats.replay_queue_depth
        if (args.shard is None and busy) or stats.shard == args.shard:
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
                stats.executor_id or "none",
            )
    console.print(shards if shards.row_count else "no shard has queued, claimed or delayed work")
    if not report.violations:
        console.print("[green]invariants hold[/green]")
    for violation in report.violations:
        console.print(f"[red]{violation.kind}[/red] ({violation.count}): {violation.description}")
        console.print("  e.g. " + ", ".join(violation.workflow_ids[:5]))


def _ranges(shards: Iterable[int]) -> str:
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
