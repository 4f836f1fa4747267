"""Which held results stand for a newer delivery of their task (ResultReporter.adopt).

A success held here finishes its step whatever token it carries: a newer delivery of the
task adopts it and is not run. A held failure does not finish the step; the newer delivery
may be the very retry it caused (the coordinator accepted the failure and re-claimed the task
for this executor before the RecordResults answer arrived), so it must run: adopting it left
the step waiting for its deadline with nothing running.
"""

from __future__ import annotations

from conveyor.executor.results import ResultReporter
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as pb


def success(task_id: int, token: int) -> pb.TaskResult:
    return pb.TaskResult(task_id=task_id, fencing_token=token, result_json='"done"')


def failure(task_id: int, token: int) -> pb.TaskResult:
    return pb.TaskResult(
        task_id=task_id,
        fencing_token=token,
        failure=pb.TaskFailure(error_class=common_pb2.ERROR_CLASS_RETRYABLE, message="hiccup"),
    )


async def test_a_held_success_is_reported_with_the_newer_token_and_not_run_again() -> None:
    reporter = ResultReporter("executor")
    reporter.add(success(1, token=11))
    assert reporter.adopt(1, 12)
    assert [r.fencing_token for r in reporter._take_batch()] == [12]


async def test_a_held_failure_lets_the_newer_delivery_run_and_keeps_its_own_token() -> None:
    reporter = ResultReporter("executor")
    reporter.add(failure(1, token=11))
    assert not reporter.adopt(1, 12)
    assert [r.fencing_token for r in reporter._take_batch()] == [11]


async def test_a_cancelled_attempts_result_is_never_adopted() -> None:
    reporter = ResultReporter("executor")
    reporter.add(success(1, token=11), adoptable=False)
    assert not reporter.adopt(1, 12)
