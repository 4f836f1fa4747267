"""Conveyor: durable LLM workflows, finished in the order they were started.

The public authoring API: workflows (run by the coordinator) and task handlers (run
by executors), plus the error types. Clients live in :mod:`conveyor.client`.
"""

from .errors import (
    ChildWorkflowFailed,
    ConfigurationError,
    ConveyorError,
    NonDeterminismError,
    PermanentTaskError,
    RpcError,
    SignalTimeout,
    StepFailed,
    TaskError,
    TaskRateLimited,
    WorkflowError,
)
from .tasks import HandlerRegistry, TaskContext, task_handler
from .workflow import (
    DEFAULT_LLM_RETRY,
    DEFAULT_TASK_RETRY,
    LlmResponse,
    RetryPolicy,
    WorkflowContext,
    WorkflowRegistry,
    workflow,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LLM_RETRY",
    "DEFAULT_TASK_RETRY",
    "ChildWorkflowFailed",
    "ConfigurationError",
    "ConveyorError",
    "HandlerRegistry",
    "LlmResponse",
    "NonDeterminismError",
    "PermanentTaskError",
    "RetryPolicy",
    "RpcError",
    "SignalTimeout",
    "StepFailed",
    "TaskContext",
    "TaskError",
    "TaskRateLimited",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowRegistry",
    "__version__",
    "task_handler",
    "workflow",
]
