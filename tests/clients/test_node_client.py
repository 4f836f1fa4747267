"""The Node.js client (clients/node) runs its example against a live coordinator, on both databases.

``npm ci`` installs the locked dependencies once; a stamp holding the lock file's
hash makes later runs skip it until package-lock.json changes. Skipped, saying
so, only where Node.js or npm is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client import AsyncClient
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from support import eventually, registry_of
from toolkit import MakeStack

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
STAMP = NODE_CLIENT / "node_modules" / ".conveyor-lock-sha256"

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="Node.js and npm are not installed: the Node.js client is not tested"
)


@workflow
async def double(ctx: WorkflowContext, value: int) -> dict[str, int]:
    return {"doubled": value * 2, "nonce_step": int(ctx.random() >= 0)}


@workflow
async def refuse(ctx: WorkflowContext) -> None:
    raise RuntimeError("refused on purpose")


WORKFLOWS = registry_of(double, refuse)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """clients/node with its dependencies installed (``npm ci``, skipped while the lock is unchanged)."""
    lock_hash = hashlib.sha256((NODE_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != lock_hash:
        result = subprocess.run(
            [str(NPM), "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
        STAMP.write_text(lock_hash)
    return NODE_CLIENT


async def run_example(directory: Path, address: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return await run_node(directory, "example.js", address, *arguments)


async def run_node(
    directory: Path, script: str, address: str, *arguments: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(NODE), script, "--coordinator", address, *arguments],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_node_example_starts_a_workflow_waits_for_it_and_diagnoses(
    make_stack: MakeStack, node_client: Path
) -> None:
    stack = await make_stack(WORKFLOWS, shards=8)

    result = await run_example(
        node_client, stack.server.address, "--workflow", "double", "--args", '{"value": 21}', "--json"
    )

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert (output["status"], output["result"]) == ("completed", {"doubled": 42, "nonce_step": 1})
    assert output["diagnose"] == {
        "epoch": "1",
        "shard_count": 8,
        "workflows_by_status": {"completed": "1"},
        "violations": [],
    }
    workflow_record = await stack.client.get_workflow(output["workflow_id"])
    assert workflow_record.result == {"doubled": 42, "nonce_step": 1}


async def test_the_node_example_reports_failures_and_errors_in_its_exit_code(
    make_stack: MakeStack, node_client: Path
) -> None:
    stack = await make_stack(WORKFLOWS)

    failed, unknown = await asyncio.gather(
        run_example(node_client, stack.server.address, "--workflow", "refuse", "--args", "{}"),
        run_example(node_client, stack.server.address, "--workflow", "nosuch", "--args", "{}"),
    )

    assert failed.returncode == 1, failed.stderr
    assert "failed: RuntimeError: refused on purpose" in failed.stdout
    assert "invariants hold" in failed.stdout
    assert unknown.returncode == 2
    assert "INVALID_ARGUMENT: unknown workflow 'nosuch'" in unknown.stderr


#: Starts `double` twice with one key: the same arguments, then other ones; prints what came back.
REUSED_KEY_SCRIPT = """
const { ConveyorClient } = require("./index.js");
const client = new ConveyorClient(process.argv[1]);
(async () => {
  const first = await client.startWorkflow("double", { value: 1 }, { idempotencyKey: "node-key" });
  const again = await client.startWorkflow("double", { value: 1 }, { idempotencyKey: "node-key" });
  let refused = null;
  try {
    await client.startWorkflow("double", { value: 2 }, { idempotencyKey: "node-key" });
  } catch (error) {
    refused = { name: error.name, code: error.code, details: error.details };
  }
  console.log(JSON.stringify({ first, again, refused }));
  client.close();
})();
"""


async def test_the_node_client_surfaces_a_reused_key_as_already_exists(
    make_stack: MakeStack, node_client: Path
) -> None:
    stack = await make_stack(WORKFLOWS)

    result = await asyncio.to_thread(
        subprocess.run,
        [str(NODE), "-e", REUSED_KEY_SCRIPT, stack.server.address],
        cwd=node_client,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["again"] == {"workflow_id": output["first"]["workflow_id"], "already_existed": True}
    assert output["refused"]["name"] == "ConveyorError"
    assert output["refused"]["code"] == "ALREADY_EXISTS"
    assert "at $.value: stored 1, this request has 2" in output["refused"]["details"]


@workflow
async def parked(ctx: WorkflowContext) -> None:
    await ctx.task("unserved", 1)


async def test_the_node_client_watches_a_workflow_until_it_finishes(
    make_stack: MakeStack, node_client: Path
) -> None:
    stack = await make_stack(registry_of(parked))
    started = await stack.client.start_workflow("parked", {})
    watching = asyncio.create_task(
        run_example(node_client, stack.server.address, "--watch", started.workflow_id, "--json")
    )

    async def watched() -> bool:
        return bool(stack.coordinator.ctx.watches.watcher_count == 1 or watching.done())

    await eventually(watched, timeout=60)
    await stack.client.cancel_workflow(started.workflow_id, "stop watching")
    result = await watching

    assert result.returncode == 1, result.stderr
    output = json.loads(result.stdout)
    assert output == {
        "workflow_id": started.workflow_id,
        "status": "cancelled",
        "events": ["snapshot", "step_cancelled", "workflow_finished"],
    }


@workflow
async def approval(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("approval")


async def test_the_node_client_signals_a_waiting_workflow(make_stack: MakeStack, node_client: Path) -> None:
    stack = await make_stack(registry_of(approval))
    started = await stack.client.start_workflow("approval", {})

    async def waiting() -> bool:
        explanation = await stack.client.explain_workflow(started.workflow_id)
        return [step.wait for step in explanation.steps] == ["signal"]

    await eventually(waiting)
    sent, unknown = await asyncio.gather(
        run_node(
            node_client,
            "signal.js",
            stack.server.address,
            "--workflow-id",
            started.workflow_id,
            "--name",
            "approval",
            "--payload",
            '{"approved": true}',
            "--json",
        ),
        run_node(
            node_client,
            "signal.js",
            stack.server.address,
            "--workflow-id",
            "no-such-id",
            "--name",
            "approval",
        ),
    )

    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"delivered": True, "duplicate": False}
    assert unknown.returncode == 2
    assert "NOT_FOUND" in unknown.stderr
    finished = await stack.client.wait(started.workflow_id, timeout=20)
    assert finished.result == {"approved": True}


# --- Following the leader among several addresses (PostgreSQL: a leader and a standby) ---


def coordinator(database_url: str, *, standby: bool = False) -> CoordinatorServer:
    config = CoordinatorConfig(
        database_url=database_url, listen="127.0.0.1:0", standby=standby, leader_lease=4.0
    )
    return CoordinatorServer(config, registry_of(double, refuse, approval))


@pytest.fixture
async def leader_and_standby(database_url: str) -> AsyncIterator[tuple[CoordinatorServer, CoordinatorServer]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("standby coordinators need PostgreSQL")
    leader, standby = coordinator(database_url), coordinator(database_url, standby=True)
    await leader.start()
    await standby.start()
    try:
        yield leader, standby
    finally:
        for each in (standby, leader):
            await each.stop(grace=0.2)


def dead_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_the_node_example_given_a_standby_first_follows_it_to_the_leader(
    leader_and_standby: tuple[CoordinatorServer, CoordinatorServer], node_client: Path
) -> None:
    leader, standby = leader_and_standby

    result = await run_example(
        node_client,
        f"{standby.address},{leader.address}",
        "--workflow",
        "double",
        "--args",
        '{"value": 4}',
        "--json",
    )

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert (output["status"], output["result"]) == ("completed", {"doubled": 8, "nonce_step": 1})
    assert output["diagnose"]["violations"] == []


#: Given an address list, makes each kind of call once and prints where it ended up.
FOLLOW_SCRIPT = """
const { ConveyorClient } = require("./index.js");
const client = new ConveyorClient(JSON.parse(process.argv[1]), { timeoutMs: 20000 });
(async () => {
  const started = await client.startWorkflow("double", { value: 5 });
  const workflow = await client.waitForWorkflow(started.workflow_id, { timeoutMs: 20000 });
  const { workflow: read } = await client.workflows.GetWorkflow({ workflow_id: started.workflow_id });
  const { current, moves } = client;
  console.log(JSON.stringify({ status: workflow.status, read: read.status, current, moves }));
  client.close();
})().catch((error) => {
  console.error(`${error.code}: ${error.details} (leader ${error.leader})`);
  process.exit(2);
});
"""


async def run_follow_script(directory: Path, addresses: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(NODE), "-e", FOLLOW_SCRIPT, json.dumps(addresses)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("first", ["standby", "dead"])
async def test_the_node_client_takes_an_address_list_and_ends_at_the_leader(
    leader_and_standby: tuple[CoordinatorServer, CoordinatorServer], node_client: Path, first: str
) -> None:
    leader, standby = leader_and_standby
    # An array here; a comma-separated string in the example test above.
    addresses = [standby.address if first == "standby" else dead_address(), leader.address]

    result = await run_follow_script(node_client, addresses)

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    completed = "WORKFLOW_STATUS_COMPLETED"
    assert output == {"status": completed, "read": completed, "current": leader.address, "moves": 1}


#: Starts a workflow given one address, printing where the client ended up.
START_SCRIPT = """
const { ConveyorClient } = require("./index.js");
const client = new ConveyorClient(process.argv[1], { timeoutMs: 5000 });
const print = (outcome) => {
  console.log(JSON.stringify(outcome));
  client.close();
};
client.startWorkflow("double", { value: 1 }).then(
  (started) => print({ started: started.workflow_id, current: client.current }),
  (error) => print({ code: error.code, leader: error.leader ?? null }),
);
"""


async def run_start_script(directory: Path, address: str) -> dict[str, Any]:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(NODE), "-e", START_SCRIPT, address],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    return output


async def test_a_standby_alone_names_the_leader_and_a_dead_address_alone_fails(
    leader_and_standby: tuple[CoordinatorServer, CoordinatorServer], node_client: Path
) -> None:
    leader, standby = leader_and_standby

    # The standby's refusal names the leader: the client adds that address and starts there.
    via_standby = await run_start_script(node_client, standby.address)
    # No coordinator at the only address: UNAVAILABLE after the retries, no leader named.
    unreachable = await run_start_script(node_client, dead_address())

    assert via_standby["current"] == leader.address, via_standby
    async with AsyncClient(leader.address) as client:
        assert (await client.get_workflow(via_standby["started"])).name == "double"
    assert unreachable == {"code": "UNAVAILABLE", "leader": None}


#: Starts `approval` given both addresses and waits for it, printing the result and address.
WAIT_THROUGH_FAILOVER_SCRIPT = """
const { ConveyorClient } = require("./index.js");
const client = new ConveyorClient(process.argv[1], { timeoutMs: 60000 });
(async () => {
  const { workflow_id } = await client.startWorkflow("approval", {});
  console.error(`started ${workflow_id}`);
  const workflow = await client.waitForWorkflow(workflow_id, { timeoutMs: 90000 });
  const result = JSON.parse(workflow.result_json);
  console.log(JSON.stringify({ workflow_id, result, current: client.current }));
  client.close();
})().catch((error) => {
  console.error(`${error.code}: ${error.details}`);
  process.exit(2);
});
"""


async def test_a_node_wait_follows_the_standby_that_takes_over(
    leader_and_standby: tuple[CoordinatorServer, CoordinatorServer], node_client: Path
) -> None:
    leader, standby = leader_and_standby
    waiting = asyncio.create_task(
        asyncio.to_thread(
            subprocess.run,
            [str(NODE), "-e", WAIT_THROUGH_FAILOVER_SCRIPT, f"{leader.address},{standby.address}"],
            cwd=node_client,
            capture_output=True,
            text=True,
            timeout=120,
        )
    )

    async def watched() -> bool:
        return bool(leader.coordinator.ctx.watches.watcher_count == 1 or waiting.done())

    await eventually(watched, timeout=60)
    # The leader goes away while the Node client watches; the standby takes over.
    await leader.stop(grace=0.2)
    async with AsyncClient(f"{leader.address},{standby.address}") as client:
        ids = [w.id async for w in client.list_workflows()]
        assert len(ids) == 1
        await client.signal_workflow(ids[0], "approval", {"approved": "after failover"})
    result = await waiting

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "workflow_id": ids[0],
        "result": {"approved": "after failover"},
        "current": standby.address,
    }
    assert standby.leadership is not None and standby.leadership.term == 2
