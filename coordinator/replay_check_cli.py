"""``conveyor replay-check``: replay stored journals against new workflow code before deploying it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from conveyor.errors import ConfigurationError
from conveyor.workflow import WorkflowRegistry

from .model import WorkflowStatus

if TYPE_CHECKING:
    from .replay_check import ReplayCheckReport

DESCRIPTION = """\
Replay the journals stored in a database against workflow code you are about to deploy,
writing nothing, and report per workflow name how many workflows would hit a
non-determinism error, and at which step. Run it before every deploy that changes
workflow code; guard what it finds with ctx.patched("change-id").

Safe against a database a coordinator is serving: it only reads.

exit codes: 0 every replay matched, 1 some would fail (or their code is missing), 2 bad usage

examples:
  conveyor replay-check --workflows my_app.workflows --db sqlite:///conveyor.db
  conveyor replay-check --workflows my_app.workflows --db postgresql+psycopg://app@db/conveyor \\
      --status running --sample 2000 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--workflows",
        action="append",
        default=[],
        required=True,
        help="the NEW code's workflow module(s), as the coordinator takes them (repeatable, or a,b)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("CONVEYOR_DB", ""),
        help="the database URL the coordinator uses (default $CONVEYOR_DB)",
    )
    parser.add_argument(
        "--status",
        action="append",
        choices=[status.value for status in WorkflowStatus],
        default=[],
        help="replay workflows in this status (repeatable; default running: the ones a deploy affects)",
    )
    parser.add_argument("--sample", type=int, default=None, help="replay N matching workflows at random")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from .replay_check import check_database

    if not args.db:
        print("conveyor replay-check: --db (or $CONVEYOR_DB) is required", file=sys.stderr)
        return 2
    if args.sample is not None and args.sample < 1:
        print("conveyor replay-check: --sample must be at least 1", file=sys.stderr)
        return 2
    # Module names are resolved as the coordinator resolves them: the current directory first.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    modules = [name.strip() for value in args.workflows for name in value.split(",") if name.strip()]
    try:
        registry = WorkflowRegistry.from_modules(modules)
    except ConfigurationError as error:
        print(f"conveyor replay-check: {error}", file=sys.stderr)
        return 2
    statuses = [WorkflowStatus(value) for value in args.status] or [WorkflowStatus.RUNNING]
    report = check_database(args.db, registry, statuses=statuses, sample=args.sample)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print(report, statuses)
    return 0 if report.ok else 1


def _print(report: ReplayCheckReport, statuses: list[WorkflowStatus]) -> None:
    which = "/".join(status.value for status in statuses)
    print(f"replayed {report.checked} {which} workflow(s) against the new code")
    for name, named in sorted(report.by_name.items()):
        verdict = "ok" if named.ok else "WOULD FAIL"
        steps = ", ".join(f"step {step}: {count}" for step, count in sorted(named.steps.items()))
        print(
            f"  {name}: {named.checked} checked, {named.nondeterministic} non-deterministic"
            f"{f' ({steps})' if steps else ''}, {named.newly_failing} newly failing — {verdict}"
        )
        for workflow_id, message in named.examples:
            print(f"    e.g. {workflow_id}: {message.splitlines()[0] if message else ''}")
    for name, count in sorted(report.unregistered.items()):
        print(f"  {name}: {count} workflow(s) whose code the new modules do not register — WOULD STALL")
    if report.ok:
        print("safe to deploy: every journal replays on the new code")
    else:
        print(
            "NOT safe to deploy as is: guard the changed code with ctx.patched('change-id') (see the "
            "README's deploy procedure), or let the affected workflows finish first"
        )
