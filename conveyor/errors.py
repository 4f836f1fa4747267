"""Every error Conveyor raises derives from :class:`ConveyorError`.

::

    ConveyorError
    ├── ConfigurationError        bad flags, settings or environment; raised at start-up
    ├── RpcError                  an RPC answered with a non-OK status (client side), or a
    │   │                         request the coordinator refuses (server side)
    │   ├── InvalidArgument       INVALID_ARGUMENT: the request itself is wrong
    │   ├── NotFound              NOT_FOUND: no such workflow
    │   ├── AlreadyExists         ALREADY_EXISTS: an idempotency key reused with other arguments
    │   ├── FailedPrecondition    FAILED_PRECONDITION: valid request, wrong state
    │   ├── ResourceExhausted     RESOURCE_EXHAUSTED: a limit was hit
    │   ├── Unauthenticated       UNAUTHENTICATED: no or unknown credentials
    │   ├── PermissionDenied      PERMISSION_DENIED: credentials of another role
    │   ├── Unavailable           UNAVAILABLE: coordinator or database unreachable; retry
    │   │   └── DatabaseInUse     another coordinator holds the database (refused at start-up,
    │   │                         or this one lost its lock and stopped writing: fenced)
    │   ├── DeadlineExceeded      DEADLINE_EXCEEDED
    │   └── InternalError         INTERNAL / UNKNOWN: a bug; the message says where
    ├── WorkflowError             raised inside workflow code, or recorded as its failure
    │   ├── StepFailed            a step failed for good; workflow code may catch it
    │   └── NonDeterminismError   replay diverged from the journal; fails the workflow
    └── TaskError                 raised by task handlers to steer the queue's retries
        ├── PermanentTaskError    fail the step at once, spending no more attempts
        └── TaskRateLimited       try again after ``retry_after`` s, spending no attempt

The coordinator raises :class:`RpcError` subclasses and one place maps them to gRPC
status codes; the client maps status codes back to the same classes, so both sides
of the wire speak one vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class ConveyorError(Exception):
    """Root of every error raised by Conveyor."""


class ConfigurationError(ConveyorError):
    """A setting, flag or environment variable is missing or inconsistent."""


class MissingExtra(ConfigurationError):
    """A feature's dependencies are not installed: they come with one of the package's extras."""

    def __init__(self, feature: str, extra: str, missing: str | None) -> None:
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{extra}' extra ({missing or 'a dependency'} is not installed): "
            f"pip install 'conveyor[{extra}]'"
        )


class RpcError(ConveyorError):
    """A request refused with a gRPC status; ``code`` is that status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @staticmethod
    def from_status(code: grpc.StatusCode, message: str) -> RpcError:
        """The typed error for a status code received from the wire."""
        cls = _ERROR_BY_CODE.get(code, InternalError)
        error = cls(message)
        if cls is InternalError:
            error.message = f"{code.name}: {message}"
        return error


class InvalidArgument(RpcError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RpcError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RpcError):
    """A start reused an idempotency key with other arguments than the workflow it started.

    The same name, key and arguments return the existing workflow instead; a new key starts
    another one.
    """

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RpcError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RpcError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(RpcError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RpcError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(RpcError):
    code = grpc.StatusCode.UNAVAILABLE


class DatabaseInUse(Unavailable):
    """Another coordinator holds the database's exclusive lock, or this one lost it.

    Two coordinators on one database would each recover and requeue the other's work, so a
    coordinator takes the lock for its whole life and refuses to start without it; one
    that loses it (its lock connection died) stops writing until it is restarted.
    """


#: Trailing metadata key with which a coordinator that does not lead names the one that does.
LEADER_METADATA_KEY = "conveyor-leader"


class NotLeader(Unavailable):
    """This coordinator does not lead its database (a standby, or a deposed leader): nothing
    was applied. ``leader_address`` is where the leader listens, when known; the refusal
    carries it in the ``conveyor-leader`` trailing metadata, and clients follow it."""

    def __init__(self, message: str, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_address = leader_address


class DeadlineExceeded(RpcError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(RpcError):
    code = grpc.StatusCode.INTERNAL


_ERROR_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        InternalError,
    )
}


class WorkflowError(ConveyorError):
    """An error that belongs to one workflow run."""


class StepFailed(WorkflowError):
    """A step of the workflow failed for good (attempts spent, or not retryable).

    Raised by ``await ctx.llm(...)`` / ``ctx.task(...)`` inside workflow code, which may
    catch it and carry on; uncaught, it fails the workflow.
    """

    def __init__(self, step_number: int, step_name: str, error: str) -> None:
        super().__init__(f"step {step_number} ({step_name!r}) failed: {error}")
        self.step_number = step_number
        self.step_name = step_name
        self.error = error


class ChildWorkflowFailed(StepFailed):
    """A child workflow (``ctx.child`` / ``ctx.start_child``) failed or was cancelled.

    Raised where the parent awaits the child; the parent may catch it (it is a
    :class:`StepFailed`). ``child_workflow_id`` names the child for ``conveyor get``.
    """

    def __init__(self, step_number: int, step_name: str, error: str, child_workflow_id: str) -> None:
        super().__init__(step_number, step_name, error)
        self.child_workflow_id = child_workflow_id


class SignalTimeout(WorkflowError):
    """No signal of the awaited name arrived within ``ctx.wait_for_signal``'s timeout.

    Workflow code may catch it (escalate, remind, give up politely); uncaught, it fails the
    workflow. The step stays in the journal as failed, so replay raises it at the same point.
    """

    def __init__(self, step_number: int, signal_name: str, error: str) -> None:
        super().__init__(f"step {step_number}: {error}")
        self.step_number = step_number
        self.signal_name = signal_name


class NonDeterminismError(WorkflowError):
    """Replaying the workflow asked for a different step than its journal records.

    The workflow code changed, or depends on something other than its arguments and
    step results (wall-clock time, randomness, I/O). The workflow is failed; catching
    this inside the workflow does not save it.
    """

    def __init__(self, message: str, step_number: int | None = None) -> None:
        super().__init__(message)
        #: The journal position where the code and the journal first disagree.
        self.step_number = step_number


class TaskError(ConveyorError):
    """Raised by an executor-side task handler to say how its failure should be retried.

    Any other exception from a handler counts as a transient failure: the attempt is
    spent and the task retried with backoff while attempts remain.
    """


class PermanentTaskError(TaskError):
    """The task will fail the same way however often it runs: fail the step now."""


class TaskRateLimited(TaskError):
    """A downstream rate limit: retry after ``retry_after`` seconds without spending an attempt."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
