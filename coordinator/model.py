"""Domain vocabulary shared by the coordinator's modules, as stored in the database.

Statuses and kinds are stored as short lower-case strings so the tables read well in
``psql`` / ``sqlite3``; :mod:`conveyor.coordinator.protocol` maps them to the wire enums.
"""

from __future__ import annotations

import base64
import hashlib
import json
from enum import StrEnum
from typing import Any


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepKind(StrEnum):
    LLM = "llm"
    TASK = "task"
    SLEEP = "sleep"
    NOW = "now"
    RANDOM = "random"
    SIGNAL = "signal"
    PATCH = "patch"
    CHILD = "child"


class ClaimOrder(StrEnum):
    """The order executors are handed queued tasks in (``--claim-order``)."""

    #: Oldest workflow first, ``(workflow_created_at, task id)``: step 3 of an old
    #: workflow runs before step 0 of a newer one. The default and the point of Conveyor.
    FIFO = "fifo"
    #: Oldest *task* first, by id: the pre-FIFO design, where every workflow's first
    #: step runs before anyone's second. Kept only as the benchmarks' baseline.
    TASK_ID = "task-id"


class ErrorClass(StrEnum):
    RETRYABLE = "retryable"
    NON_RETRYABLE = "non_retryable"
    RATE_LIMITED = "rate_limited"


#: The executor task kind that runs LLM steps; handler kinds may not reuse it.
LLM_TASK_KIND = "llm"

#: Step kinds that become tasks in the queue, run by executors.
EXECUTOR_STEP_KINDS = frozenset({StepKind.LLM, StepKind.TASK})


def child_workflow_id(parent_id: str, step_number: int) -> str:
    """The id of the child workflow started at ``step_number`` of ``parent_id``.

    Derived, not random, so that replay knows it without reading anything (``handle.workflow_id``)
    and a replayed start can never create a second child. 32 hex digits, like a started workflow's.
    """
    return hashlib.sha256(f"{parent_id}/{step_number}".encode()).hexdigest()[:32]


def canonical_json(value: Any) -> str:
    """The one JSON spelling of ``value``, so equal arguments compare equal as text.

    Raises ``TypeError`` / ``ValueError`` for values JSON cannot carry (objects, NaN) or the
    database cannot store (strings with lone surrogates).
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # A lone surrogate ("\ud800" in JSON, or surrogateescape-decoded bytes) is a Python str but not
    # Unicode text: neither database can store it, so it is refused here, where values enter.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"a string holds the lone surrogate {text[error.start]!r} (at character {error.start} of "
            "the JSON), which is not Unicode text; decode bytes properly or send them base64-encoded"
        ) from None
    return text


def canonical_digest(canonical_text: str) -> str:
    """A collision-resistant name of a canonical JSON text: SHA-256, base64url without padding
    (43 characters). The journal keeps it for arguments it stores compacted, and replay compares
    it instead of the text (:mod:`conveyor.coordinator.store.payloads`)."""
    digest = hashlib.sha256(canonical_text.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
