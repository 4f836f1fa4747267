"""What one run asked of its database: transactions, statements, rows, WAL bytes, server CPU.

Three sources, each attributable to the run even on a database server other people use:

* :mod:`bench.harness.statement_probe` inside the coordinator counts its statements by
  verb, the rows they reported and its commits (both databases).
* :class:`PostgresWalMeter` reads the server's write-ahead log with ``pg_walinspect`` while
  the run goes on and keeps only the records that touch the run's schema (by relfilenode),
  plus the commit records of the transactions that wrote them. ``pg_current_wal_lsn``
  deltas and ``pg_stat_wal`` are server-wide, so on a shared server they count everyone's
  writes; they are recorded too, labelled as such. After the run ``pg_stat_user_tables``
  gives the rows each table had inserted, updated and deleted (including trigger writes).
* :class:`ProcessIoMeter` samples the coordinator's and (on PostgreSQL) its server
  backends' CPU and bytes written: on SQLite the coordinator process writes the WAL and
  checkpoints itself, on PostgreSQL the backend serving the writer does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from .databases import RunDatabase
from .statement_probe import OUTPUT_ENV

log = logging.getLogger(__name__)

#: Seconds between WAL scans: short enough that no checkpoint recycles a segment before it is read.
WAL_SCAN_INTERVAL = 2.0
STATEMENT_PROBE_MODULE = "bench.harness.statement_probe"

#: The records of one WAL window that belong to the run's schema. ``:prior`` carries the
#: transaction ids of the window before, so a transaction whose commit record falls into the
#: next window is still counted.
_WAL_WINDOW_SQL = """
WITH records AS MATERIALIZED (
    SELECT xid::text::bigint AS xid, resource_manager, record_type, record_length, fpi_length,
        r.block_ref IS NOT NULL AND EXISTS (
            SELECT 1 FROM regexp_matches(r.block_ref, 'rel \\d+/(\\d+)/(\\d+)', 'g') AS m
            WHERE m[1]::oid = :database_oid AND m[2]::oid = ANY(CAST(:relfilenodes AS oid[]))
        ) AS touching
    FROM {extension_schema}.pg_get_wal_records_info(CAST(:start AS pg_lsn), CAST(:end AS pg_lsn)) r
), writers AS (
    SELECT xid FROM records WHERE touching AND xid <> 0
    UNION SELECT unnest(CAST(:prior AS bigint[]))
)
SELECT
    count(*) AS records,
    coalesce(sum(record_length), 0) AS record_bytes,
    coalesce(sum(fpi_length), 0) AS fpi_bytes,
    count(*) FILTER (WHERE fpi_length > 0) AS fpi_records,
    count(*) FILTER (WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%') AS commits,
    (SELECT coalesce(array_agg(DISTINCT xid), '{{}}') FROM records WHERE touching AND xid <> 0)
        AS writer_xids
FROM records
WHERE touching OR (xid <> 0 AND xid IN (SELECT xid FROM writers))
"""


@dataclass
class WalTally:
    """WAL attributed to one run (sums over every scanned window)."""

    records: int = 0
    record_bytes: int = 0
    fpi_bytes: int = 0
    fpi_records: int = 0
    commits: int = 0
    windows: int = 0
    #: Server-wide, for context: everyone's WAL during the run (``pg_current_wal_lsn`` delta).
    server_wal_bytes: int = 0
    #: Server-wide ``pg_stat_wal`` deltas (records, fpi, bytes, write, sync).
    server_stat_wal: dict[str, float] = field(default_factory=dict)


class PostgresWalMeter:
    """``with PostgresWalMeter(database) as meter:`` attributes the WAL written meanwhile."""

    def __init__(self, database: RunDatabase, interval: float = WAL_SCAN_INTERVAL) -> None:
        assert database.kind == "postgresql" and database.schema is not None
        self.database = database
        self.schema: str = database.schema
        self.interval = interval
        self.tally = WalTally()
        self._engine = sa.create_engine(database.url, isolation_level="AUTOCOMMIT")
        self._extension_schema = ""
        self._created_extension = False
        self._start_lsn = ""
        self._last_lsn = ""
        self._prior_xids: list[int] = []
        self._stat_wal_before: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan_until_stopped, name="wal-meter", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> PostgresWalMeter:
        with self._engine.connect() as connection:
            self._extension_schema = self._ensure_extension(connection)
            self._database_oid = int(
                connection.execute(
                    sa.text("SELECT oid FROM pg_database WHERE datname = current_database()")
                ).scalar_one()
            )
            self._start_lsn = self._last_lsn = str(
                connection.execute(sa.text("SELECT pg_current_wal_flush_lsn()")).scalar_one()
            )
            self._stat_wal_before = _stat_wal(connection)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            with self._engine.connect() as connection:
                self._scan(connection)
                end = connection.execute(sa.text("SELECT pg_current_wal_flush_lsn()")).scalar_one()
                self.tally.server_wal_bytes = int(
                    connection.execute(
                        sa.text("SELECT CAST(:end AS pg_lsn) - CAST(:start AS pg_lsn)"),
                        {"end": str(end), "start": self._start_lsn},
                    ).scalar_one()
                )
                after = _stat_wal(connection)
                self.tally.server_stat_wal = {
                    key: after[key] - self._stat_wal_before.get(key, 0.0) for key in after
                }
                if self._created_extension:
                    connection.execute(sa.text(f'DROP SCHEMA "{self._extension_schema}" CASCADE'))
        finally:
            self._engine.dispose()

    def _ensure_extension(self, connection: sa.Connection) -> str:
        """The schema holding ``pg_walinspect``: an existing installation, or one made for the run."""
        existing = connection.execute(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'pg_walinspect'"
            )
        ).scalar()
        if existing is not None:
            return str(existing)
        schema = f"{self.schema}_walinspect"
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        connection.execute(sa.text(f'CREATE EXTENSION pg_walinspect SCHEMA "{schema}"'))
        self._created_extension = True
        return schema

    def _scan_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._engine.connect() as connection:
                    self._scan(connection)
            except sa.exc.SQLAlchemyError as error:  # keep measuring; the report names the gap
                self.error = f"a WAL scan failed ({error.__class__.__name__}: {error}); the WAL tally is low"
                log.warning("%s", self.error)

    def _scan(self, connection: sa.Connection) -> None:
        end = str(connection.execute(sa.text("SELECT pg_current_wal_flush_lsn()")).scalar_one())
        if end == self._last_lsn:
            return
        relfilenodes = [
            int(value)
            for value in connection.execute(
                sa.text(
                    "WITH ours AS (SELECT c.relfilenode, c.reltoastrelid FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema) "
                    "SELECT relfilenode FROM ours WHERE relfilenode <> 0 "
                    "UNION SELECT t.relfilenode FROM ours JOIN pg_class t ON t.oid = ours.reltoastrelid "
                    "UNION SELECT i.relfilenode FROM ours JOIN pg_index x ON x.indrelid = ours.reltoastrelid "
                    "JOIN pg_class i ON i.oid = x.indexrelid"
                ),
                {"schema": self.schema},
            ).scalars()
        ]
        row = (
            connection.execute(
                sa.text(_WAL_WINDOW_SQL.format(extension_schema=f'"{self._extension_schema}"')),
                {
                    "start": self._last_lsn,
                    "end": end,
                    "database_oid": self._database_oid,
                    "relfilenodes": relfilenodes,
                    "prior": self._prior_xids,
                },
            )
            .mappings()
            .one()
        )
        tally = self.tally
        tally.records += int(row["records"])
        tally.record_bytes += int(row["record_bytes"])
        tally.fpi_bytes += int(row["fpi_bytes"])
        tally.fpi_records += int(row["fpi_records"])
        tally.commits += int(row["commits"])
        tally.windows += 1
        self._prior_xids = [int(x) for x in row["writer_xids"]]
        self._last_lsn = end


def _stat_wal(connection: sa.Connection) -> dict[str, float]:
    row = (
        connection.execute(
            sa.text("SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
        )
        .mappings()
        .one()
    )
    return {key: float(value) for key, value in row.items()}


def table_row_changes(database: RunDatabase) -> dict[str, dict[str, int]]:
    """Rows each of the run's tables had inserted, updated (HOT among them) and deleted.

    Read after the coordinator disconnected: a backend flushes its counters when it exits.
    """
    if database.kind != "postgresql":
        return {}
    engine = sa.create_engine(database.url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
                    "FROM pg_stat_user_tables WHERE schemaname = :schema ORDER BY relname"
                ),
                {"schema": database.schema},
            ).all()
    finally:
        engine.dispose()
    return {
        str(name): {"inserted": int(i), "updated": int(u), "hot_updated": int(h), "deleted": int(d)}
        for name, i, u, h, d in rows
    }


@dataclass
class _ProcessTotals:
    cpu_seconds: float = 0.0
    write_bytes: int = 0
    write_chars: int = 0


class ProcessIoMeter:
    """Cumulative CPU and bytes written by the coordinator and the PostgreSQL backends serving it.

    :meth:`sample` is called periodically while the run lasts (the harness's once-a-second
    progress hook); each process keeps the largest cumulative value seen, so a backend that
    exits before the end still counts up to its last sample.
    """

    def __init__(self, probe_output: Path, postgres_port: int | None) -> None:
        self.probe_output = probe_output
        self.postgres_port = postgres_port
        self.coordinator = _ProcessTotals()
        self.backends: dict[int, _ProcessTotals] = {}
        self._coordinator_pid: int | None = None

    def sample(self, *_ignored: Any) -> bool:
        """Take one sample; returns False (the harness's "stop now?" hook never stops the run)."""
        with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error):
            if self._coordinator_pid is None:
                self._coordinator_pid = int(json.loads(self.probe_output.read_text())["pid"])
            coordinator = psutil.Process(self._coordinator_pid)
            _update(self.coordinator, coordinator)
            if self.postgres_port is not None:
                ports = {
                    c.laddr.port
                    for c in coordinator.net_connections(kind="tcp")
                    if c.raddr and c.raddr.port == self.postgres_port
                }
                for process in psutil.process_iter(["cmdline"]):
                    title = " ".join(process.info["cmdline"] or [])
                    if title.startswith("postgres:") and any(f"({port})" in title for port in ports):
                        _update(self.backends.setdefault(process.pid, _ProcessTotals()), process)
        return False

    def backend_totals(self) -> _ProcessTotals:
        return _ProcessTotals(
            sum(b.cpu_seconds for b in self.backends.values()),
            sum(b.write_bytes for b in self.backends.values()),
            sum(b.write_chars for b in self.backends.values()),
        )


def _update(totals: _ProcessTotals, process: psutil.Process) -> None:
    with process.oneshot():
        cpu = process.cpu_times()
        io = process.io_counters()
    totals.cpu_seconds = max(totals.cpu_seconds, cpu.user + cpu.system)
    totals.write_bytes = max(totals.write_bytes, io.write_bytes)
    totals.write_chars = max(totals.write_chars, getattr(io, "write_chars", 0))


def read_statement_counts(path: Path) -> dict[str, Any]:
    """The probe's last dump (see :mod:`bench.harness.statement_probe`)."""
    counts: dict[str, Any] = json.loads(path.read_text())
    return counts


@contextlib.contextmanager
def wal_meter(database: RunDatabase) -> Iterator[PostgresWalMeter | None]:
    """A :class:`PostgresWalMeter` on PostgreSQL, nothing on SQLite."""
    if database.kind != "postgresql":
        yield None
        return
    with PostgresWalMeter(database) as meter:
        yield meter


def probe_environment(path: Path) -> dict[str, str]:
    return {OUTPUT_ENV: str(path)}
