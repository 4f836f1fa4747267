"""Client commands of the ``conveyor`` CLI: start, follow, explain and cancel workflows; operate the queue.

Output is a human-readable table by default and JSON with ``--json``: the CLI picks one
:class:`~conveyor.client.output.Output` and the commands hand it their results. Each
command reads its flags as a frozen dataclass, parsed once from argparse's namespace.
Exit codes (:data:`EXIT_CODES`) let scripts tell a refused request from a missing
workflow from a coordinator that is down, and a workflow that failed from one still
running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from conveyor import transport
from conveyor.durations import UNITS
from conveyor.errors import (
    ConfigurationError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RpcError,
    Unavailable,
)

from .client import AsyncClient
from .models import Workflow, WorkflowStatus
from .output import Output, output_for, visible

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_WORKFLOW_FAILED = 5
EXIT_STILL_RUNNING = 6
EXIT_INVARIANT_BROKEN = 7

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the coordinator refused the request (e.g. the workflow already finished, or an
     idempotency key was reused with other arguments)
  {EXIT_USAGE}  bad usage or a request the coordinator found invalid
  {EXIT_NOT_FOUND}  no such workflow
  {EXIT_UNAVAILABLE}  the coordinator is unreachable
  {EXIT_WORKFLOW_FAILED}  waited for a workflow that finished failed or cancelled
  {EXIT_STILL_RUNNING}  waited, and the workflow was still running when --within ran out
  {EXIT_INVARIANT_BROKEN}  admin diagnose found a broken invariant
"""

A = TypeVar("A")


@dataclass(frozen=True)
class Command(Generic[A]):
    """A client command: how it reads its flags, and what it does with them.

    ``run`` returns the exit code (None: success).
    """

    parse: Callable[[argparse.Namespace], A]
    run: Callable[[AsyncClient, A, Output], Awaitable[int | None]]


# ----------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every client command takes: where the coordinator is, how to talk to it, output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    transport.add_arguments(parser, address=True)  # --coordinator, --token-file, --tls...: also $CONVEYOR_*


def _shard_arguments(
    parser: argparse.ArgumentParser, *, limit_help: str = "act on at most this many"
) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--shard", type=int, help="act on this shard only")
    target.add_argument("--all", action="store_true", help="act on every shard")
    parser.add_argument("--limit", type=int, default=0, help=f"{limit_help} (default: no limit)")
    parser.add_argument("--reason", default="", help="recorded on every affected step or workflow")


def _command(
    subparsers: Any, name: str, summary: str, description: str, example: str, command: Command[Any]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=f"{description}\n\nexample:\n  {example}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=command, handler=run)
    return parser


def add_commands(subparsers: Any) -> None:
    """Mount the client commands (start, get, list, count, wait, explain, cancel, admin ...)."""
    start = _command(
        subparsers,
        "start",
        "start a workflow and print its id",
        "Start a workflow and print its id (with --wait: wait for it, then show it).",
        'conveyor start research --args \'{"topic": "tides"}\'  (or --args @args.json, or --args -)',
        Command(StartArgs.parse, _start),
    )
    start.add_argument("name", help="registered workflow name")
    start.add_argument(
        "--args",
        default="",
        metavar="JSON|@FILE|-",
        help="JSON object (keyword arguments) or array (positional); @FILE reads it from a file, "
        "- from stdin",
    )
    start.add_argument(
        "--idempotency-key",
        default="",
        help="per workflow name: a repeat with the same arguments returns the first workflow; with "
        "other arguments it is refused (exit 1)",
    )
    start.add_argument("--wait", action="store_true", help="wait for the workflow to finish")
    _within_argument(start)
    _common(start)

    get = _command(
        subparsers,
        "get",
        "show a workflow and its steps",
        "Show a workflow, its result or error, and its steps with their queue and run times.",
        "conveyor get 3f2a9c... --json",
        Command(GetArgs.parse, _get),
    )
    get.add_argument("workflow_id")
    get.add_argument("--wait", action="store_true", help="wait for the workflow to finish first")
    _within_argument(get)
    _common(get)

    listing = _command(
        subparsers,
        "list",
        "list workflows, oldest first, with filters and pages",
        "List workflows in start order (oldest first, the FIFO order), a page at a time. The last "
        "line says how to get the next page.",
        "conveyor list --status failed --name research --page-size 20",
        Command(ListArgs.parse, _list),
    )
    listing.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in WorkflowStatus],
        default=[],
        help="only this status (repeatable; default any)",
    )
    listing.add_argument("--name", default="", help="only workflows of this name")
    listing.add_argument(
        "--page-size", type=int, default=50, help="workflows per page (default 50, at most 1000)"
    )
    listing.add_argument("--page-token", default="", help="the token the previous page printed")
    listing.add_argument("--newest-first", action="store_true", help="newest first instead")
    _common(listing)

    count = _command(
        subparsers,
        "count",
        "count workflows by status",
        "Count workflows in each status: cheap enough to poll for progress.",
        "conveyor count --name research",
        Command(CountArgs.parse, _count),
    )
    count.add_argument("--name", default="", help="only workflows of this name")
    _common(count)

    wait = _command(
        subparsers,
        "wait",
        "wait for workflows to finish",
        "Wait until every workflow given has finished, showing progress; the exit code says whether "
        "all completed.",
        "conveyor wait 3f2a9c... 7be01d... --within 600",
        Command(WaitArgs.parse, _wait),
    )
    wait.add_argument("workflow_ids", nargs="+", metavar="workflow_id")
    _within_argument(wait)
    _common(wait)

    explain = _command(
        subparsers,
        "explain",
        "say in plain words why a workflow is where it is",
        "Explain why a workflow is where it is: for each step in progress, its place in its shard's "
        "queue and the executor leasing the shard, the executor running it, the retry it waits for, "
        "or its timer; otherwise whether it waits for a replay, or when and why it finished.",
        "conveyor explain 3f2a9c...",
        Command(ExplainArgs.parse, _explain),
    )
    explain.add_argument("workflow_id")
    _common(explain)

    signal = _command(
        subparsers,
        "signal",
        "send a signal to a running workflow",
        "Send a signal to a running workflow: its next ctx.wait_for_signal(NAME) returns the payload. "
        "Signals sent before the workflow waits are buffered and delivered in the order sent.",
        'conveyor signal 3f2a9c... approval --payload \'{"approved": true, "by": "ana"}\'',
        Command(SignalArgs.parse, _signal),
    )
    signal.add_argument("workflow_id")
    signal.add_argument("name", help="the signal name the workflow waits for")
    signal.add_argument("--payload", default="null", help="any JSON value (default null)")
    signal.add_argument(
        "--idempotency-key", default="", help="a repeated send with the same key stores the signal once"
    )
    _common(signal)

    cancel = _command(
        subparsers,
        "cancel",
        "cancel workflows by id, or in bulk by filter (with a dry run)",
        "Cancel running workflows: the ones named by id (one already finished or unknown is reported "
        "and the others are still cancelled), or, server-side and oldest first, every one "
        "that matches a filter (a shard or --all, and optionally a name and start-time bounds). "
        "With --dry-run nothing changes and the matches are counted. Times are ISO 8601 "
        "(2025-01-31T12:00:00, UTC unless an offset is given) or a duration ago (90s, 30m, 2h, 1d).",
        "conveyor cancel --all --name research --started-before 2h --dry-run",
        Command(CancelArgs.parse, _cancel),
    )
    cancel.add_argument("workflow_ids", nargs="*", metavar="workflow_id", help="workflows to cancel")
    target = cancel.add_mutually_exclusive_group()
    target.add_argument("--shard", type=int, help="bulk: the running workflows of this shard")
    target.add_argument("--all", action="store_true", help="bulk: the running workflows of every shard")
    cancel.add_argument("--name", default="", help="bulk: only workflows of this name")
    cancel.add_argument(
        "--started-before", type=_moment, metavar="TIME", help="bulk: only those started before"
    )
    cancel.add_argument(
        "--started-after", type=_moment, metavar="TIME", help="bulk: only those started after"
    )
    cancel.add_argument("--limit", type=int, default=0, help="bulk: at most this many, oldest first")
    cancel.add_argument("--dry-run", action="store_true", help="bulk: count the matches, cancel nothing")
    cancel.add_argument("--reason", default="", help="recorded as each workflow's error")
    _common(cancel)

    purge = _command(
        subparsers,
        "purge",
        "delete finished workflows and their journals (with a dry run)",
        "Delete, server-side and oldest finish first, the finished workflows (completed, failed, "
        "cancelled) that finished before a time, with every step of their journals. Running "
        "workflows are never purged. With --dry-run nothing changes and the matches are counted. "
        "Times are ISO 8601 (2025-01-31T12:00:00, UTC unless an offset is given) or a duration ago "
        "(90m, 12h, 7d). The coordinator's --retention does the same in the background.",
        "conveyor purge --finished-before 7d --status failed --dry-run",
        Command(PurgeArgs.parse, _purge),
    )
    purge.add_argument(
        "--finished-before",
        type=_moment,
        metavar="TIME",
        required=True,
        help="purge the workflows that finished before this time (ISO 8601, or a duration ago: 7d)",
    )
    purge.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in WorkflowStatus if status.finished],
        default=[],
        help="only workflows that finished so (repeatable; default: completed, failed and cancelled)",
    )
    purge.add_argument("--limit", type=int, default=0, help="at most this many, oldest first")
    purge.add_argument("--dry-run", action="store_true", help="count the matches, delete nothing")
    _common(purge)

    _add_admin_commands(subparsers)


def _add_admin_commands(subparsers: Any) -> None:
    admin_parser = subparsers.add_parser(
        "admin",
        help="operator actions and diagnosis",
        description="Operator actions on the queues, epochs, and the health check of the whole system.",
    )
    admin = admin_parser.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    fail = _command(
        admin,
        "fail-pending",
        "fail queued tasks so their workflows finish as failures",
        "Fail queued (unclaimed) tasks, oldest first; each workflow sees its step fail (StepFailed) "
        "and usually fails with it. For a poisoned shard: stop its work without losing the workflows' "
        "history.",
        "conveyor admin fail-pending --shard 17 --reason 'poisoned prompt'",
        Command(ShardAction.parse, _fail_pending),
    )
    _shard_arguments(fail)
    _common(fail)

    bump = _command(
        admin,
        "bump-epoch",
        "drain every running executor (they finish, report and exit)",
        "Start a new epoch: executors of older epochs stop claiming, report what they hold and exit 0. "
        "Executors started afterwards join the new epoch. Use it to roll out new executors.",
        "conveyor admin bump-epoch --reason 'deploy v2'",
        Command(BumpEpochArgs.parse, _bump_epoch),
    )
    bump.add_argument("--reason", default="")
    _common(bump)

    for name, summary, command in (
        (
            "clear-replay-queue",
            "remove replay-queue entries, cancelling their workflows",
            Command(ShardAction.parse, _clear_replay_queue),
        ),
        (
            "clear-task-queue",
            "remove tasks (queued and claimed), cancelling their workflows",
            Command(ShardAction.parse, _clear_task_queue),
        ),
    ):
        clear = _command(
            admin,
            name,
            summary,
            f"{summary[0].upper()}{summary[1:]}.",
            f"conveyor admin {name} --shard 3 --reason 'bad deploy'",
            command,
        )
        _shard_arguments(clear)
        _common(clear)

    diagnose = _command(
        admin,
        "diagnose",
        "queue depths, executors, leases and the invariant check",
        "Per-shard queue depth and oldest task age, the replay queue, connected executors with their "
        "shards and epochs, and every invariant violation (exit code 7 when there is one).",
        "conveyor admin diagnose --json",
        Command(DiagnoseArgs.parse, _diagnose),
    )
    diagnose.add_argument("--shard", type=int, help="show only this shard's row")
    _common(diagnose)


def _within_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--within",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with waiting: give up after this long (exit code 6); default: wait as long as it takes",
    )


_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhdw])")


def _moment(text: str) -> datetime:
    """ISO 8601 (UTC unless it has an offset), or a duration ago: 90s, 30m, 2h, 1d."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        ago = float(match["amount"]) * UNITS[match["unit"]]
        return datetime.now(UTC) - timedelta(seconds=ago)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2025-01-31T12:00:00) nor a duration ago (30m, 2h)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -------------------------------------------------------------- typed arguments


@dataclass(frozen=True)
class Connection:
    """Where the coordinator is, how to talk to it, and how to show the results (every command)."""

    coordinator: str
    timeout: float
    json: bool

    @classmethod
    def parse(cls, args: argparse.Namespace) -> Connection:
        # --coordinator, else $CONVEYOR_COORDINATOR, else the default.
        return cls(coordinator=transport.coordinator_address(args), timeout=args.timeout, json=args.json)


@dataclass(frozen=True)
class StartArgs:
    name: str
    args: str
    idempotency_key: str
    wait: bool
    within: float | None

    @classmethod
    def parse(cls, args: argparse.Namespace) -> StartArgs:
        return cls(args.name, args.args, args.idempotency_key, args.wait, args.within)


@dataclass(frozen=True)
class GetArgs:
    workflow_id: str
    wait: bool
    within: float | None

    @classmethod
    def parse(cls, args: argparse.Namespace) -> GetArgs:
        return cls(args.workflow_id, args.wait, args.within)


@dataclass(frozen=True)
class ListArgs:
    statuses: tuple[WorkflowStatus, ...]
    name: str
    page_size: int
    page_token: str
    newest_first: bool

    @classmethod
    def parse(cls, args: argparse.Namespace) -> ListArgs:
        statuses = tuple(WorkflowStatus(status) for status in args.status)
        return cls(statuses, args.name, args.page_size, args.page_token, args.newest_first)


@dataclass(frozen=True)
class CountArgs:
    name: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> CountArgs:
        return cls(args.name)


@dataclass(frozen=True)
class WaitArgs:
    #: Without repeats, in the order given.
    workflow_ids: tuple[str, ...]
    within: float | None

    @classmethod
    def parse(cls, args: argparse.Namespace) -> WaitArgs:
        return cls(tuple(dict.fromkeys(args.workflow_ids)), args.within)


@dataclass(frozen=True)
class ExplainArgs:
    workflow_id: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> ExplainArgs:
        return cls(args.workflow_id)


@dataclass(frozen=True)
class SignalArgs:
    workflow_id: str
    name: str
    payload: str
    idempotency_key: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> SignalArgs:
        return cls(args.workflow_id, args.name, args.payload, args.idempotency_key)


@dataclass(frozen=True)
class CancelArgs:
    workflow_ids: tuple[str, ...]
    shard: int | None
    all: bool
    name: str
    started_before: datetime | None
    started_after: datetime | None
    limit: int
    dry_run: bool
    reason: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> CancelArgs:
        return cls(
            tuple(args.workflow_ids),
            args.shard,
            args.all,
            args.name,
            args.started_before,
            args.started_after,
            args.limit,
            args.dry_run,
            args.reason,
        )

    @property
    def bulk(self) -> bool:
        return self.all or self.shard is not None

    def bulk_only_flags(self) -> list[str]:
        """The bulk-only filters given (wrong with workflow ids)."""
        given = (
            ("--name", self.name),
            ("--limit", self.limit),
            ("--dry-run", self.dry_run),
            ("--started-before", self.started_before),
            ("--started-after", self.started_after),
        )
        return [flag for flag, value in given if value]


@dataclass(frozen=True)
class PurgeArgs:
    finished_before: datetime
    statuses: tuple[WorkflowStatus, ...]
    limit: int
    dry_run: bool

    @classmethod
    def parse(cls, args: argparse.Namespace) -> PurgeArgs:
        statuses = tuple(WorkflowStatus(status) for status in dict.fromkeys(args.status))
        return cls(args.finished_before, statuses, args.limit, args.dry_run)


@dataclass(frozen=True)
class ShardAction:
    """An admin action on one shard (``--shard N``) or on all (``--all``): ``shard`` None."""

    shard: int | None
    limit: int
    reason: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> ShardAction:
        return cls(None if args.all else args.shard, args.limit, args.reason)


@dataclass(frozen=True)
class BumpEpochArgs:
    reason: str

    @classmethod
    def parse(cls, args: argparse.Namespace) -> BumpEpochArgs:
        return cls(args.reason)


@dataclass(frozen=True)
class DiagnoseArgs:
    shard: int | None

    @classmethod
    def parse(cls, args: argparse.Namespace) -> DiagnoseArgs:
        return cls(args.shard)


# ------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    command: Command[Any] = args.command
    connection = Connection.parse(args)
    arguments = command.parse(args)
    # Chosen before any request: a missing `cli` extra (rich) is reported up front.
    output = output_for(json=connection.json)

    async def call() -> int | None:
        security = transport.security_from_arguments(
            args
        )  # flags, else $CONVEYOR_TOKEN_FILE, $CONVEYOR_TLS...
        target, timeout = connection.coordinator, connection.timeout
        async with AsyncClient(target, timeout=timeout, security=security) as client:
            return await command.run(client, arguments, output)

    try:
        return asyncio.run(call()) or EXIT_OK
    except ConfigurationError as error:
        _fail(str(error))
        return EXIT_USAGE
    except NotFound as error:
        _fail(error.message)
        return EXIT_NOT_FOUND
    except Unavailable as error:
        _fail(
            f"cannot reach the coordinator at {connection.coordinator}: {error.message} "
            "(is it running? is --coordinator right?)"
        )
        return EXIT_UNAVAILABLE
    except InvalidArgument as error:
        _fail(error.message)
        return EXIT_USAGE
    except RpcError as error:
        _fail(error.message)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


def _fail(message: str) -> None:
    # Messages often quote what the coordinator or another caller sent: keep escapes off the terminal.
    print(f"conveyor: {visible(message, multiline=True)}", file=sys.stderr)


def _usage(message: str) -> int:
    _fail(message)
    return EXIT_USAGE


# -------------------------------------------------------------------- workflows


def read_arguments(given: str) -> str:
    """The JSON text of ``--args``: as given, or read from ``@FILE`` or from stdin (``-``).

    What is read is checked here, so a wrong file is reported with its name rather than as
    the coordinator's complaint about the text; JSON given inline is the coordinator's to check.
    """
    if given == "-":
        source, text = "stdin", sys.stdin.read()
    elif given.startswith("@"):
        path = given[1:]
        source = path
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ConfigurationError(f"cannot read --args file {path!r}: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise ConfigurationError(f"--args file {path!r} is not UTF-8 text: {error}") from None
    else:
        return given
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"--args from {source} is not valid JSON: {error}") from None
    return text


async def _start(client: AsyncClient, args: StartArgs, output: Output) -> int | None:
    arguments = read_arguments(args.args)
    started = await client.start_workflow(args.name, arguments, idempotency_key=args.idempotency_key)
    if not args.wait:
        output.started(started)
        return None
    return await _show_after_wait(client, started.workflow_id, args.within, output)


async def _get(client: AsyncClient, args: GetArgs, output: Output) -> int | None:
    if args.wait:
        return await _show_after_wait(client, args.workflow_id, args.within, output)
    output.workflow(await client.get_workflow(args.workflow_id, include_steps=True))
    return None


async def _show_after_wait(
    client: AsyncClient, workflow_id: str, within: float | None, output: Output
) -> int:
    try:
        await client.wait(workflow_id, timeout=within)
    except DeadlineExceeded as error:
        _fail(error.message)
        return EXIT_STILL_RUNNING
    workflow = await client.get_workflow(workflow_id, include_steps=True)
    output.workflow(workflow)
    return EXIT_OK if workflow.status is WorkflowStatus.COMPLETED else EXIT_WORKFLOW_FAILED


async def _list(client: AsyncClient, args: ListArgs, output: Output) -> int | None:
    workflows, token = await client.list_workflows_page(
        statuses=list(args.statuses),
        name=args.name,
        page_size=args.page_size,
        page_token=args.page_token,
        newest_first=args.newest_first,
    )
    output.workflow_page(workflows, token)
    return None


async def _count(client: AsyncClient, args: CountArgs, output: Output) -> int | None:
    output.counts(await client.count_workflows(args.name))
    return None


#: Workflows ``conveyor wait`` polls at once; the rest wait their turn (they finish in FIFO order anyway).
WAIT_CONCURRENCY = 50


async def _wait(client: AsyncClient, args: WaitArgs, output: Output) -> int | None:
    ids = args.workflow_ids
    finished: dict[str, Workflow] = {}
    deadline = None if args.within is None else time.monotonic() + args.within
    pollers = asyncio.Semaphore(WAIT_CONCURRENCY)
    with output.progress(len(ids)) as bar:

        async def wait_one(workflow_id: str) -> None:
            async with pollers:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    finished[workflow_id] = await client.wait(workflow_id, timeout=remaining)
                except DeadlineExceeded:
                    return
            bar.advance()

        await asyncio.gather(*(wait_one(workflow_id) for workflow_id in ids))
    pending = [workflow_id for workflow_id in ids if workflow_id not in finished]
    if pending:
        _fail(f"{len(pending)} workflow(s) still running after {args.within}s: {', '.join(pending[:5])}")
        return EXIT_STILL_RUNNING
    results = [finished[workflow_id] for workflow_id in ids]
    output.workflows(results)
    all_completed = all(w.status is WorkflowStatus.COMPLETED for w in results)
    return EXIT_OK if all_completed else EXIT_WORKFLOW_FAILED


async def _explain(client: AsyncClient, args: ExplainArgs, output: Output) -> int | None:
    output.explanation(await client.explain_workflow(args.workflow_id))
    return None


async def _signal(client: AsyncClient, args: SignalArgs, output: Output) -> int | None:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        return _usage(
            f"--payload is not JSON ({error}); quote it for the shell, e.g. --payload '{{\"ok\": true}}'"
        )
    output.signal_sent(
        await client.signal_workflow(
            args.workflow_id, args.name, payload, idempotency_key=args.idempotency_key
        )
    )
    return None


async def _cancel(client: AsyncClient, args: CancelArgs, output: Output) -> int | None:
    if args.workflow_ids and args.bulk:
        return _usage("give workflow ids or a bulk filter (--shard/--all), not both")
    if args.workflow_ids:
        filters = args.bulk_only_flags()
        if filters:
            return _usage(f"{', '.join(filters)} only apply to a bulk cancel (--shard N or --all)")
        return await _cancel_each(client, args, output)
    if not args.bulk:
        return _usage("name the workflows to cancel, or pick them by filter with --shard N or --all")
    outcome = await client.cancel_workflows(
        None if args.all else args.shard,
        name=args.name,
        started_before=args.started_before,
        started_after=args.started_after,
        limit=args.limit,
        dry_run=args.dry_run,
        reason=args.reason,
    )
    output.bulk_cancel(outcome, dry_run=args.dry_run)
    return None


async def _cancel_each(client: AsyncClient, args: CancelArgs, output: Output) -> int | None:
    """Cancel each workflow named; one already finished or unknown does not stop the others.

    Each refusal is reported as it comes; the exit code is that of the worst one (refused 1,
    bad id 2, not found 3). An unreachable coordinator or a refused token stops at once.
    """
    cancelled: list[Workflow] = []
    refusals: list[tuple[str, RpcError]] = []
    for workflow_id in dict.fromkeys(args.workflow_ids):
        try:
            cancelled.append(await client.cancel_workflow(workflow_id, args.reason))
        except (NotFound, FailedPrecondition, InvalidArgument) as error:
            _fail(f"not cancelled: {error.message}")
            refusals.append((workflow_id, error))
    if cancelled:
        output.workflows(cancelled)
    if not refusals:
        return None
    if len(args.workflow_ids) > 1:
        names = ", ".join(workflow_id for workflow_id, _ in refusals)
        _fail(f"cancelled {len(cancelled)} of {len(cancelled) + len(refusals)}; not cancelled: {names}")
    codes = {_CANCEL_EXIT_CODES[type(error)] for _, error in refusals}
    return EXIT_REFUSED if EXIT_REFUSED in codes else max(codes)


_CANCEL_EXIT_CODES: dict[type[RpcError], int] = {
    FailedPrecondition: EXIT_REFUSED,
    InvalidArgument: EXIT_USAGE,
    NotFound: EXIT_NOT_FOUND,
}


async def _purge(client: AsyncClient, args: PurgeArgs, output: Output) -> int | None:
    outcome = await client.purge_workflows(
        args.finished_before, statuses=args.statuses, limit=args.limit, dry_run=args.dry_run
    )
    output.purge(outcome, dry_run=args.dry_run)
    return None


# ------------------------------------------------------------------------ admin


async def _fail_pending(client: AsyncClient, args: ShardAction, output: Output) -> int | None:
    output.failed_tasks(await client.fail_pending_tasks(args.shard, limit=args.limit, reason=args.reason))
    return None


async def _bump_epoch(client: AsyncClient, args: BumpEpochArgs, output: Output) -> int | None:
    output.epoch_bumped(await client.bump_epoch(args.reason))
    return None


async def _clear_replay_queue(client: AsyncClient, args: ShardAction, output: Output) -> int | None:
    response = await client.clear_replay_queue(args.shard, limit=args.limit, reason=args.reason)
    output.cleared("replay-queue entries", response.cleared_entries, response.cancelled_workflows)
    return None


async def _clear_task_queue(client: AsyncClient, args: ShardAction, output: Output) -> int | None:
    response = await client.clear_task_queue(args.shard, limit=args.limit, reason=args.reason)
    output.cleared("tasks", response.cleared_tasks, response.cancelled_workflows)
    return None


async def _diagnose(client: AsyncClient, args: DiagnoseArgs, output: Output) -> int | None:
    report = await client.diagnose()
    output.diagnosis(report, args.shard)
    return EXIT_INVARIANT_BROKEN if report.violations else None
