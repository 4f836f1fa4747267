"""Results delivered twice, late and out of order, while a real executor works alongside.

A hand-driven executor (:class:`support.ManualExecutor`) takes its share of the
tasks and answers each correctly, but delivers its results the way a bad network
and retrying clients do: each batch shuffled, every result sent twice in the same
batch and again in a later one, some held back until after the next batch, and a
copy of some with the previous (stale) fencing token. Exactly one copy of each
result may be applied; the rest are acknowledged as duplicates or rejected as stale.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import replace

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload
from conveyor.v1 import executor_service_pb2 as pb
from support import ManualExecutor, llm_message_json

pytestmark = pytest.mark.slow

BATCH = 50


def echo(task: pb.Task) -> str:
    """What the echo simulator answers to this LLM task."""
    payload = json.loads(task.payload_json)
    return llm_message_json(payload["messages"][-1]["content"][: payload["max_tokens"] * 4])


async def test_duplicate_late_and_out_of_order_result_deliveries_apply_each_result_once(
    chaos_settings: ChaosSettings,
) -> None:
    workload = Workload(300, "deliveries")
    rng = random.Random(7)
    taken = duplicates = stale_copies = 0
    dispositions: Counter[int] = Counter()
    with ChaosCluster(replace(chaos_settings, executors=1)) as chaos:
        address = chaos.cluster.coordinator_address
        async with chaos.client() as client, ManualExecutor(address, "replaying", capacity=BATCH) as manual:

            async def deliver(results: list[pb.TaskResult]) -> None:
                for start in range(0, len(results), BATCH):
                    dispositions.update(await manual.report(*results[start : start + BATCH]))

            async def all_finished() -> bool:
                return all(status.finished for status, n in (await workload.counts(client)).items() if n)

            await manual.connect(free_slots=BATCH)
            await workload.start(client)
            held_back: list[pb.TaskResult] = []  # to be delivered after the next batch
            repeats: list[pb.TaskResult] = []  # delivered in the previous batch, to be sent again
            while not await all_finished():
                if not manual.untaken():
                    await deliver(held_back)  # nothing new comes until they are in
                    held_back = []
                    await asyncio.sleep(0.02)
                    continue
                tasks = await manual.take(manual.untaken())
                taken += len(tasks)
                results = [manual.success(task, echo(task)) for task in tasks]
                late, on_time = results[:1], results[1:]
                stale = [
                    manual.success(task, echo(task), fencing_token=task.fencing_token - 1)
                    for task in rng.sample(tasks, len(tasks) // 4)
                ]
                batch = [*on_time, *on_time, *held_back, *stale, *repeats]
                rng.shuffle(batch)
                await deliver(batch)
                duplicates += len(on_time) + len(repeats)
                stale_copies += len(stale)
                repeats, held_back = [*on_time, *held_back], late
                await manual.credit(len(tasks))
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 300}
    assert taken > 100, "the replaying executor took its share of the tasks"
    assert dispositions == {
        pb.RESULT_DISPOSITION_ACCEPTED: taken,
        pb.RESULT_DISPOSITION_DUPLICATE: duplicates,
        pb.RESULT_DISPOSITION_STALE: stale_copies,
    }
