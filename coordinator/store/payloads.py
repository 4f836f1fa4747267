"""Step arguments stored in linear space: large parts once per workflow, by content.

An agent loop resends its whole conversation at every LLM step, so storing each step's
arguments whole makes a workflow's journal grow with the square of its turns. Instead a
step whose canonical arguments are at least :data:`MIN_ARGS_CHARS` long is stored
*compacted*: its JSON text with large parts replaced by references to rows of
``blobs`` (keyed by workflow and digest), each written once however many steps resend it.

Two kinds of reference, each spelled as a JSON object with spaces that canonical JSON never
contains (it has no whitespace outside strings, and a ``"`` inside a string is escaped), so a
reference can never be confused with user data, and a stored value stays readable JSON:

* ``{ "$blob": "<digest>" }`` stands for a JSON value (an object, array or string) whose
  canonical text hashes to ``digest``; its row holds the value's own compacted text.
* ``{ "$list": "<digest>" }`` stands for a list, named by the digest of its canonical text
  up to its last element (``[e1,...,en`` without the closing bracket, which no complete value
  can equal). Its row holds the run of elements the list added to an earlier prefix, named by
  ``parent``: a conversation that grew by two messages since the last step costs one row of
  two messages, and reading it back walks the parent chain (one recursive query).

Lists directly in the arguments (not inside a list's elements) are stored as such chains;
other objects, arrays and strings are blobs when their compacted text is still long.
Values :data:`MAX_DEPTH` levels down are not split further.

Each compacted step also stores ``args_digest``, the SHA-256 of its full canonical arguments,
which replay compares with the arguments the workflow code asks for
(:meth:`conveyor.coordinator.replay.JournalEntry.was_called_with`): as strong as comparing
the text, and replay never reassembles a past request. Steps with short arguments, and every
row written before this scheme, keep their plain canonical JSON and a NULL digest; readers
tell the two apart by the reference marker, which plain canonical JSON cannot contain.

The encoder (:mod:`conveyor.coordinator.args_encoding`) spells each value's canonical text
alongside its compacted one, and stores a step plain unless its own spelling equals the
step's canonical text exactly (a value it would spell differently from
:func:`conveyor.coordinator.model.canonical_json`): reassembly, which only substitutes parts'
texts for their references, is byte-identical or not used. Replay encodes a step's arguments
incrementally, reusing its previous step's (that module), and hands the writer the result.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Collection, Hashable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, bindparam, delete, or_, select, update
from sqlalchemy.engine import Connection

from conveyor.errors import ConveyorError

from ..args_encoding import MARKER, MAX_DEPTH, MIN_ARGS_CHARS, Compacted, EncodedArgs, compact
from ..model import canonical_digest
from .dialect import Dialect
from .schema import blobs, steps

__all__ = [
    "MIN_ARGS_CHARS",
    "CorruptJournalError",
    "RecentArgs",
    "compact_step_args",
    "delete_workflow_parts",
    "expanded_args",
    "inline_all_step_args",
    "is_compacted",
    "recent_args",
]

K = TypeVar("K", bound=Hashable)

#: The longest list suffix looked up first for an already stored prefix; a list that changed
#: further back is looked up whole.
RECENT_PREFIXES = 32
#: How many of a list's last prefixes end a row: with 2, the last element has a row of its
#: own, so a step that changes it (Anthropic's prompt-cache marker moving on to the newest
#: message) still continues the previous step's chain, re-storing only that element.
SEPARATE_TAIL = 2
#: Digests per lookup query (bound parameters are limited per statement).
LOOKUP_CHUNK = 500
#: Characters of just-compacted arguments kept for their claim (:class:`RecentArgs`).
RECENT_ARGS_CHARS = 64 * 1024 * 1024

_MARKER = MARKER
_REFERENCE = re.compile(r'\{ "\$(blob|list)": "([A-Za-z0-9_-]{43})" \}')


class CorruptJournalError(ConveyorError):
    """A compacted step argument refers to a part its workflow does not have."""


# --- writing -------------------------------------------------------------------------------------


class RecentArgs:
    """The full canonical arguments of steps this process just compacted, by ``args_digest``,
    for the claim that hands them to an executor moments later: reassembling them from their
    parts reads and joins the whole parent chain of a conversation, so it would cost the
    claim time proportional to the conversation at every step.

    Keyed by the SHA-256 of the text itself, so an entry is right for any row with that digest,
    whatever happened since (a rolled-back write, another coordinator); a miss reads the parts.
    An entry is dropped when taken (a step is claimed once; a retry reads the parts) and the
    oldest beyond ``max_chars``. Thread-safe: written by the writer, read by the claim."""

    def __init__(self, max_chars: int = RECENT_ARGS_CHARS) -> None:
        self._max_chars = max_chars
        self._texts: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, digest: str, text: str) -> None:
        if len(text) > self._max_chars:
            return
        with self._lock:
            old = self._texts.pop(digest, None)
            if old is not None:
                self._chars -= len(old)
            self._texts[digest] = text
            self._chars += len(text)
            while self._chars > self._max_chars:
                _, oldest = self._texts.popitem(last=False)
                self._chars -= len(oldest)

    def take(self, digest: str) -> str | None:
        with self._lock:
            text = self._texts.pop(digest, None)
            if text is not None:
                self._chars -= len(text)
            return text

    def clear(self) -> None:
        with self._lock:
            self._texts.clear()
            self._chars = 0


#: The process's recently compacted arguments (content-addressed, so one for all databases).
recent_args = RecentArgs()


def compact_step_args(
    connection: Connection,
    dialect: Dialect,
    rows: Sequence[MutableMapping[str, Any]],
    encoded: Sequence[EncodedArgs | None] | None = None,
) -> None:
    """Before ``rows`` (``steps`` rows with ``workflow_id`` and canonical ``args``) are inserted:
    compact their large arguments, set ``args_digest`` on those, and insert the parts the
    workflows do not have yet. Rows are processed in order, so a later step may continue a
    list an earlier row of the same batch stored.

    ``encoded``, one per row where known: the arguments as replay encoded them
    (:class:`~conveyor.coordinator.args_encoding.EncodedArgs`, the same compacted form and
    digest), which spares parsing and hashing the whole text again; None: from the text."""
    plans: list[tuple[MutableMapping[str, Any], Compacted, EncodedArgs | None]] = []
    for index, row in enumerate(rows):
        row.setdefault("args_digest", None)
        known_encoding = encoded[index] if encoded is not None else None
        if known_encoding is not None and known_encoding.text is row["args"]:
            compacted = known_encoding.compacted
        else:  # no encoding, or not of this very text: from scratch
            known_encoding = None
            compacted = compact(row["args"])
        if compacted is not None:
            plans.append((row, compacted, known_encoding))
    if not plans:
        return
    wanted: set[tuple[str, str]] = set()
    for row, compacted, _ in plans:
        workflow_id = row["workflow_id"]
        wanted.update((workflow_id, digest) for digest in compacted.blobs)
        for chain in compacted.chains:
            wanted.update((workflow_id, digest) for digest in chain.prefixes[-RECENT_PREFIXES:])
    known = _existing(connection, wanted)
    # A list changed before its recent end (history edited or trimmed): look its prefixes up whole.
    older: set[tuple[str, str]] = set()
    for row, compacted, _ in plans:
        for chain in compacted.chains:
            recent = chain.prefixes[-RECENT_PREFIXES:]
            if len(chain.prefixes) > RECENT_PREFIXES and not any(
                (row["workflow_id"], d) in known for d in recent
            ):
                older.update((row["workflow_id"], d) for d in chain.prefixes[:-RECENT_PREFIXES])
    known |= _existing(connection, older)
    new_rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(workflow_id: str, digest: str, parent: str | None, body: str) -> None:
        key = (workflow_id, digest)
        if key not in known and key not in new_rows:
            new_rows[key] = {"workflow_id": workflow_id, "digest": digest, "parent": parent, "body": body}

    for row, compacted, known_encoding in plans:
        workflow_id = row["workflow_id"]
        for digest, body in compacted.blobs.items():
            add(workflow_id, digest, None, body)
        for chain in compacted.chains:
            start = _longest_stored_prefix(workflow_id, chain.prefixes, known, new_rows)
            length = len(chain.prefixes)
            # The last few elements get rows of their own, so that the next step finds the
            # prefix before them even if it changed them (a prompt-cache marker moved on).
            for end in range(max(start + 1, length - SEPARATE_TAIL + 1), length + 1):
                element_blobs: dict[str, str] = {}
                body = chain.stored_run(start, end, element_blobs)
                for digest, blob_body in element_blobs.items():
                    add(workflow_id, digest, None, blob_body)
                add(workflow_id, chain.prefixes[end - 1], chain.prefixes[start - 1] if start else None, body)
                start = end
        row["args_digest"] = (
            known_encoding.digest if known_encoding is not None else canonical_digest(row["args"])
        )
        recent_args.put(row["args_digest"], row["args"])
        row["args"] = compacted.stored
    if new_rows:
        connection.execute(dialect.insert_ignoring_duplicates(blobs), list(new_rows.values()))


def _longest_stored_prefix(
    workflow_id: str,
    prefixes: Sequence[str],
    known: set[tuple[str, str]],
    new_rows: Mapping[tuple[str, str], object],
) -> int:
    """How many leading elements an existing (or just planned) row already holds."""
    for end in range(len(prefixes), 0, -1):
        key = (workflow_id, prefixes[end - 1])
        if key in known or key in new_rows:
            return end
    return 0


def _keys_in(keys: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    """``(workflow_id, digest) IN keys``, spelled per workflow: SQLite scans the whole table
    for a row-value IN, but looks up each ``workflow_id = ? AND digest IN (...)`` in the key."""
    by_workflow: dict[str, list[str]] = {}
    for workflow_id, digest in keys:
        by_workflow.setdefault(workflow_id, []).append(digest)
    return or_(
        *(
            and_(blobs.c.workflow_id == workflow_id, blobs.c.digest.in_(digests))
            for workflow_id, digests in by_workflow.items()
        )
    )


def _existing(connection: Connection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    pending = list(keys)
    for start in range(0, len(pending), LOOKUP_CHUNK):
        chunk = pending[start : start + LOOKUP_CHUNK]
        found.update(
            (row.workflow_id, row.digest)
            for row in connection.execute(select(blobs.c.workflow_id, blobs.c.digest).where(_keys_in(chunk)))
        )
    return found


# --- reading -------------------------------------------------------------------------------------


def is_compacted(stored_args: str) -> bool:
    return _MARKER in stored_args


def expanded_args(
    connection: Connection,
    stored: Mapping[K, tuple[str, str]],
    digests: Mapping[K, str | None] | None = None,
) -> dict[K, str]:
    """The canonical arguments of steps, from ``{key: (workflow id, stored args)}``.

    Plain rows are returned as they are, without a query; the parts of compacted ones are
    read in a few queries for the whole batch (one per nesting level of references, each
    following list chains to their start in the database), never one per part. ``digests``
    (the rows' ``args_digest``): the claim's, to take the arguments from :data:`recent_args`
    when this process just wrote them (taken: each is handed out once that way).
    """
    found: dict[K, str] = {}
    for key, (_, text) in stored.items():
        digest = digests.get(key) if digests is not None and _MARKER in text else None
        recent = recent_args.take(digest) if digest is not None else None
        if recent is not None:
            found[key] = recent
    compacted = {key: value for key, value in stored.items() if _MARKER in value[1] and key not in found}
    if not compacted:
        return {key: found.get(key, text) for key, (_, text) in stored.items()}
    parts = _PartReader(connection)
    parts.load(
        {
            (workflow_id, digest)
            for workflow_id, text in compacted.values()
            for _, digest in _REFERENCE.findall(text)
        }
    )
    return {
        key: parts.expand(workflow_id, text) if key in compacted else found.get(key, text)
        for key, (workflow_id, text) in stored.items()
    }


#: Rounds of reference loading before the data is declared corrupt: references nest at most
#: ``MAX_DEPTH`` levels (plus a list's element), so more rounds means a reference cycle.
_MAX_ROUNDS = MAX_DEPTH + 3


class _PartReader:
    """The parts of one batch of steps, loaded level by level, and their expansions."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._rows: dict[tuple[str, str], tuple[str | None, str]] = {}
        self._expanded: dict[tuple[str, str], str] = {}
        self._expanding: set[tuple[str, str]] = set()

    def load(self, keys: set[tuple[str, str]]) -> None:
        for _ in range(_MAX_ROUNDS):
            missing = keys - self._rows.keys()
            if not missing:
                return
            fetched = _fetch_with_ancestors(self._connection, missing)
            self._rows.update(fetched)
            absent = missing - fetched.keys()
            if absent:
                workflow_id, digest = sorted(absent)[0]
                raise CorruptJournalError(
                    f"workflow {workflow_id} refers to stored argument part {digest}, which its journal "
                    "does not hold (deleted by hand?); restore the conveyor_blobs rows from a backup"
                )
            keys = {
                (workflow_id, digest)
                for (workflow_id, _), (_, body) in fetched.items()
                if _MARKER in body
                for _, digest in _REFERENCE.findall(body)
            }
        raise CorruptJournalError(
            "stored argument parts refer to each other in a cycle; the journal is corrupt"
        )

    def expand(self, workflow_id: str, text: str) -> str:
        if _MARKER not in text:
            return text
        return _REFERENCE.sub(lambda match: self._part(workflow_id, match.group(1), match.group(2)), text)

    def _part(self, workflow_id: str, kind: str, digest: str) -> str:
        key = (workflow_id, digest)
        if kind == "blob":
            if key not in self._expanded:
                if key in self._expanding:
                    raise CorruptJournalError(
                        f"the stored part {digest} of workflow {workflow_id} contains itself"
                    )
                self._expanding.add(key)
                self._expanded[key] = self.expand(workflow_id, self._row(key)[1])
            return self._expanded[key]
        runs: list[str] = []
        seen: set[str] = set()
        current: str | None = digest
        while current is not None:
            if current in seen:
                raise CorruptJournalError(f"the stored list {digest} of workflow {workflow_id} is a cycle")
            seen.add(current)
            parent, body = self._row((workflow_id, current))
            node = (workflow_id, current)
            if node not in self._expanded:
                self._expanded[node] = self.expand(workflow_id, body)
            runs.append(self._expanded[node])
            current = parent
        runs.reverse()
        return "[" + ",".join(runs) + "]"

    def _row(self, key: tuple[str, str]) -> tuple[str | None, str]:
        try:
            return self._rows[key]
        except KeyError:
            raise CorruptJournalError(
                f"workflow {key[0]} refers to stored argument part {key[1]}, which was not loaded"
            ) from None


def _fetch_with_ancestors(
    connection: Connection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str | None, str]]:
    """The rows ``keys`` name and every list ancestor of theirs (a recursive query per chunk)."""
    found: dict[tuple[str, str], tuple[str | None, str]] = {}
    pending = sorted(keys)
    for start in range(0, len(pending), LOOKUP_CHUNK):
        chunk = pending[start : start + LOOKUP_CHUNK]
        walk = (
            select(blobs.c.workflow_id, blobs.c.digest, blobs.c.parent)
            .where(_keys_in(chunk))
            .cte("walk", recursive=True)
        )
        parents = blobs.alias("parents")
        walk = walk.union(
            select(parents.c.workflow_id, parents.c.digest, parents.c.parent).join(
                walk, and_(parents.c.workflow_id == walk.c.workflow_id, parents.c.digest == walk.c.parent)
            )
        )
        for row in connection.execute(
            select(blobs.c.workflow_id, blobs.c.digest, blobs.c.parent, blobs.c.body).join(
                walk, and_(blobs.c.workflow_id == walk.c.workflow_id, blobs.c.digest == walk.c.digest)
            )
        ):
            found[(row.workflow_id, row.digest)] = (row.parent, row.body)
    return found


# --- deleting ------------------------------------------------------------------------------------


def delete_workflow_parts(connection: Connection, workflow_ids: Collection[str]) -> int:
    """Delete the stored argument parts of ``workflow_ids``; returns how many rows went.

    Whatever deletes workflows (retention, a purge) calls this with their steps' deletion:
    parts belong to one workflow, and the foreign key to ``workflows`` refuses to delete a
    workflow whose parts are left. Cancelling keeps the journal, and so the parts."""
    if not workflow_ids:
        return 0
    return int(connection.execute(delete(blobs).where(blobs.c.workflow_id.in_(list(workflow_ids)))).rowcount)


# --- migrating back ------------------------------------------------------------------------------


def inline_all_step_args(connection: Connection) -> None:
    """Write every compacted step's arguments back whole (the downgrade of migration 0009)."""
    rows = connection.execute(
        select(steps.c.id, steps.c.workflow_id, steps.c.args).where(steps.c.args_digest.is_not(None))
    ).all()
    if not rows:
        return
    full = expanded_args(connection, {row.id: (row.workflow_id, row.args) for row in rows})
    connection.execute(
        update(steps).where(steps.c.id == bindparam("step_id")).values(args=bindparam("full_args")),
        [{"step_id": step_id, "full_args": text} for step_id, text in full.items()],
    )
