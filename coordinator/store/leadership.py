"""Leadership of a PostgreSQL database: one coordinator leads (writes), the others stand by.

The ``conveyor_leadership`` row names the leader: its *term* (raised by one at every
takeover), its id, the address it serves on, and the deadline by which it must renew
(on the database's clock, so coordinators' clocks need not agree).

* The leader renews every third of the lease (:meth:`Leadership.renew`): a conditional
  ``UPDATE ... WHERE term = mine AND holder = me``; no row updated means it was deposed.
* A standby reads the row every poll and, once the deadline has passed, takes over: it locks
  the row ``FOR UPDATE``, checks the term it saw and the deadline again, and raises the term
  (:meth:`Leadership.campaign`); of several standbys exactly one wins.
* **Fencing.** Every write transaction of the leader begins with :meth:`Leadership.fence`:
  ``SELECT term ... FOR KEY SHARE`` on the row. Holding that lock until commit, the
  transaction serializes with a takeover, which locks the row ``FOR UPDATE`` before raising
  the term: either it committed before the takeover (and the new leader recovers its
  writes), or it reads the new term and is refused. The leader's own renewals update no key
  column, so they take no lock that conflicts with its write transactions. A paused
  (SIGSTOP) or partitioned old leader therefore never commits after a new one took over,
  whatever its clock says. The same statement sets the transaction's
  ``idle_in_transaction_session_timeout``, so a leader paused *inside* a transaction
  does not hold its lock (and block the takeover) for longer than that.

Advisory locks alone would not do: a partitioned leader keeps its session, and its lock,
until TCP gives up. SQLite has no leadership: one coordinator holds the file lock
(:mod:`.ownership`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, exc, literal_column, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import ColumnElement

from conveyor.errors import NotLeader

from .schema import leadership

log = logging.getLogger(__name__)

#: The database's clock in microseconds: every deadline is set and compared on it.
_DATABASE_NOW_US: ColumnElement[int] = literal_column(
    "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
)
#: How long a leader's transaction may sit idle (its process paused, its network cut)
#: before PostgreSQL ends it, releasing the share lock a takeover waits for.
IDLE_IN_TRANSACTION_MS = 3000
#: How long a takeover waits for a (paused) leader's transaction before trying next poll.
TAKEOVER_LOCK_TIMEOUT = "1s"
#: PostgreSQL's SQLSTATE for a lock wait that ran past lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"


def unique_holder(description: str) -> str:
    """A coordinator's id in the leadership row: its readable ``description`` made unique.

    Host, pid and start time are not enough: two coordinators of one process (tests,
    embedding) or two containers with the same hostname and pid started in the same second
    would share them, and each would take the other's lease for its own (renew it, not name
    it as the leader)."""
    return f"{description} (instance {uuid.uuid4().hex[:8]})"


@dataclass(frozen=True)
class Leader:
    """The leadership row as last read."""

    term: int
    holder: str
    address: str
    deadline_us: int
    #: The database's clock when it was read.
    now_us: int

    @property
    def expired(self) -> bool:
        return self.deadline_us < self.now_us

    def describe(self) -> str:
        return f"{self.holder} at {self.address} (term {self.term})"


class Leadership:
    """This coordinator's standing in its database's leadership: leader of a term, or standby.

    Its own engine (no pool: every call a fresh connection) keeps campaigning apart from the
    writer, whose connection may be stuck in a long transaction.
    """

    def __init__(self, url: str, *, holder: str, address: str, lease: float) -> None:
        self.holder = holder
        self.address = address
        self.lease_us = int(lease * 1_000_000)
        # Autocommit: every campaign statement is a transaction of its own, so a coordinator
        # paused between two statements never sits "idle in transaction" holding the row.
        self._engine: Engine = create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": max(1, int(lease / 3))},
        )
        #: The term this coordinator leads; None while it stands by.
        self.term: int | None = None
        #: The leader as last seen (this coordinator too, while it leads).
        self.leader: Leader | None = None
        #: Why this coordinator stopped leading, once it did; its writes are refused meanwhile.
        self.fenced: str | None = None

    @property
    def leading(self) -> bool:
        return self.term is not None

    @property
    def leader_address(self) -> str | None:
        return None if self.leader is None else self.leader.address

    def read(self, connection: Connection | None = None) -> Leader | None:
        query = select(
            leadership.c.term,
            leadership.c.holder,
            leadership.c.address,
            leadership.c.deadline_us,
            _DATABASE_NOW_US.label("now_us"),
        ).where(leadership.c.id == 1)
        if connection is not None:
            row = connection.execute(query).first()
        else:
            with self._engine.connect() as own:
                row = own.execute(query).first()
        return None if row is None else Leader(row.term, row.holder, row.address, row.deadline_us, row.now_us)

    def campaign(self) -> bool:
        """One round: take the lead if nobody holds it or its deadline passed; True if this
        coordinator leads now. A leader renews instead (:meth:`renew`)."""
        if self.term is not None:
            return self.renew()
        with self._engine.connect() as connection:
            current = self.read(connection)
            if current is None:
                term = connection.execute(
                    postgresql.insert(leadership)
                    .values(
                        id=1,
                        term=1,
                        holder=self.holder,
                        address=self.address,
                        deadline_us=_DATABASE_NOW_US + self.lease_us,
                        elected_at_us=_DATABASE_NOW_US,
                    )
                    .on_conflict_do_nothing()
                    .returning(leadership.c.term)
                ).scalar()
            elif current.expired:
                term = self._take_over(current)
            else:
                self.leader = current
                return False
            leader = self.read(connection)
        if term is not None:
            self.term = int(term)  # before the leader changes: never a moment naming itself as another
        self.leader = leader
        if term is None:
            return False  # another standby won this round
        self.fenced = None
        log.warning(
            "leading the database from %s (term %d%s)",
            self.address,
            self.term,
            "" if current is None else f"; took over from {current.describe()} whose lease had run out",
        )
        return True

    def _take_over(self, current: Leader) -> int | None:
        """Raise the term of ``current``, whose lease ran out; None if another standby was first.

        ``FOR UPDATE`` on the row waits for the old leader's open write transactions (their
        key-share locks). One stalled *inside* a statement (a paused process half-way through
        sending a pipelined insert) is not idle, so nothing ends it: once the wait times out,
        the transactions still holding the row are terminated, and the next poll takes over.
        """
        try:
            with (
                self._engine.connect().execution_options(isolation_level="READ COMMITTED") as connection,
                connection.begin(),
            ):
                connection.execute(
                    select(
                        literal_column(f"set_config('lock_timeout', '{TAKEOVER_LOCK_TIMEOUT}', true)"),
                        literal_column(
                            "set_config('idle_in_transaction_session_timeout', "
                            f"'{IDLE_IN_TRANSACTION_MS}', true)"
                        ),
                    )
                )
                locked = connection.execute(
                    select(leadership.c.term, (leadership.c.deadline_us < _DATABASE_NOW_US).label("expired"))
                    .where(leadership.c.id == 1)
                    .with_for_update()
                ).first()
                if locked is None or locked.term != current.term or not locked.expired:
                    return None  # another standby took over, or the leader renewed meanwhile
                term = connection.execute(
                    update(leadership)
                    .where(leadership.c.id == 1)
                    .values(
                        term=leadership.c.term + 1,
                        holder=self.holder,
                        address=self.address,
                        deadline_us=_DATABASE_NOW_US + self.lease_us,
                        elected_at_us=_DATABASE_NOW_US,
                    )
                    .returning(leadership.c.term)
                ).scalar_one()
        except exc.OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            with self._engine.connect() as connection:
                ended = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l "
                        f"WHERE l.relation = '{leadership.name}'::regclass AND l.mode = 'RowShareLock' "
                        "AND l.granted AND l.pid <> pg_backend_pid()"
                    )
                ).scalar()
            log.warning(
                "%s's lease ran out but its write transactions still hold the leadership row; "
                "terminated %s of them, taking over at the next poll",
                current.describe(),
                ended,
            )
            return None
        return int(term)

    def renew(self) -> bool:
        """Push this leader's deadline a lease ahead; False (and fenced) if it was deposed."""
        term = self.term
        if term is None:
            return False
        with self._engine.connect() as connection:
            renewed = connection.execute(
                update(leadership)
                .where(leadership.c.id == 1, leadership.c.term == term, leadership.c.holder == self.holder)
                .values(deadline_us=_DATABASE_NOW_US + self.lease_us)
                .returning(leadership.c.term)
            ).scalar()
            if renewed is None:
                self.leader = self.read(connection)
        if renewed is None:
            taker = "another coordinator" if self.leader is None else self.leader.describe()
            self.step_down(f"{taker} took over the database (this one led term {term})")
            return False
        return True

    def fence(self, connection: Connection) -> None:
        """First statement of every write transaction: refuse it unless this coordinator still
        leads its term. The key-share lock it takes lasts until the transaction ends."""
        term = self.term
        if term is None:
            raise self.refusal()
        current = connection.execute(
            select(
                leadership.c.term,
                literal_column(
                    f"set_config('idle_in_transaction_session_timeout', '{IDLE_IN_TRANSACTION_MS}', true)"
                ),
            )
            .where(leadership.c.id == 1)
            .with_for_update(read=True, key_share=True)
        ).scalar()
        if current != term:
            self.leader = self.read(connection)
            taker = "another coordinator" if self.leader is None else self.leader.describe()
            self.step_down(f"{taker} took over the database (this one led term {term})")
            raise self.refusal()

    def check(self) -> None:
        """Raise :class:`NotLeader` unless this coordinator leads (the writer's guard)."""
        if self.term is None:
            raise self.refusal()

    def step_down(self, reason: str) -> None:
        """Stop leading: from now on every write is refused."""
        if self.term is not None:
            log.error("stepping down: %s; standing by", reason)
        self.term = None
        self.fenced = f"it no longer leads the database: {reason}"

    def refusal(self) -> NotLeader:
        leader = self.leader if self.leader is not None and self.leader.holder != self.holder else None
        where = (
            f"the leader is {leader.describe()}; send requests there"
            if leader is not None
            else "no leader is known yet; retry shortly (a standby takes over within the lease)"
        )
        deposed = "" if self.fenced is None else f" ({self.fenced})"
        return NotLeader(
            f"this coordinator ({self.address}) is a standby and does not serve work{deposed}; {where}",
            None if leader is None else leader.address,
        )

    def resign(self) -> None:
        """On a clean stop: end the lease now, so a standby takes over at its next poll."""
        term, self.term = self.term, None
        if term is None:
            return
        with self._engine.connect() as connection:
            connection.execute(
                update(leadership)
                .where(leadership.c.id == 1, leadership.c.term == term, leadership.c.holder == self.holder)
                .values(deadline_us=0)
            )
        log.info("resigned the lead of term %d", term)

    def release(self) -> None:
        """Drop the campaign's connections (the lease is left to run out or be resigned)."""
        self._engine.dispose()
