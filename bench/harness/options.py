"""Command-line options every scenario shares."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .databases import DEFAULT_POSTGRES_URL
from .report import DEFAULT_ROOT

DATABASE_KINDS = ("sqlite", "postgresql")


def add_common_arguments(parser: argparse.ArgumentParser, *, default_db: str = "sqlite,postgresql") -> None:
    parser.add_argument(
        "--db",
        default=default_db,
        help="comma-separated database kinds to run on: sqlite, postgresql (default %(default)s)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CONVEYOR_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="PostgreSQL server for the postgresql runs; each run gets a fresh schema "
        "(default $CONVEYOR_BENCH_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_ROOT, help="results folder (default %(default)s/)"
    )


def database_kinds(value: str) -> list[str]:
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in DATABASE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--db takes sqlite and/or postgresql, not {value!r}")
    return kinds


def int_list(value: str) -> list[int]:
    try:
        numbers = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {value!r}")
    return numbers
