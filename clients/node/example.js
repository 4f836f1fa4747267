// Start a workflow, wait for it, and ask the coordinator for its Diagnose report.
//
//   node example.js --coordinator 127.0.0.1:50051 --workflow research --args '{"topic": "tides"}'
//
//   node example.js --watch WORKFLOW_ID      (follow a workflow already started; print its events)
//
// Prints what it does; with --json, prints one JSON object instead (for scripts and tests).
// Exits 0 when the workflow completed, 1 when it failed or was cancelled, 2 on any error.
"use strict";

const { parseArgs } = require("node:util");
const { ConveyorClient } = require("./index.js");

async function main() {
  const { values } = parseArgs({
    options: {
      coordinator: { type: "string", default: "127.0.0.1:50051" },
      workflow: { type: "string", default: "research" },
      args: { type: "string", default: '{"topic": "tides"}' },
      json: { type: "boolean", default: false },
      watch: { type: "string", default: "" },
    },
  });
  const say = values.json ? () => {} : (line) => console.log(line);
  const client = new ConveyorClient(values.coordinator);
  try {
    if (values.watch) return await watch(client, values.watch, values.json, say);
    const started = await client.startWorkflow(values.workflow, JSON.parse(values.args));
    say(`started ${values.workflow}: ${started.workflow_id}`);
    const workflow = await client.waitForWorkflow(started.workflow_id, { timeoutMs: 120000 });
    const status = workflow.status.replace("WORKFLOW_STATUS_", "").toLowerCase();
    const result = workflow.result_json ? JSON.parse(workflow.result_json) : null;
    say(`${status}: ${workflow.error || JSON.stringify(result)}`);
    const report = await client.admin.Diagnose({});
    const problems = report.violations.map((v) => v.kind);
    say(
      `diagnose: epoch ${report.epoch}, ${report.shard_count} shards, ${report.executors.length} executor(s), ` +
        `replay queue ${report.replay_queue_depth}, ` +
        (problems.length ? `broken invariants: ${problems.join(", ")}` : "invariants hold"),
    );
    if (values.json) {
      console.log(JSON.stringify({
        workflow_id: started.workflow_id,
        status,
        result,
        diagnose: {
          epoch: report.epoch,
          shard_count: report.shard_count,
          workflows_by_status: report.workflows_by_status,
          violations: problems,
        },
      }));
    }
    return status === "completed" ? 0 : 1;
  } finally {
    client.close();
  }
}

// Follow a workflow already started, printing each event as the coordinator pushes it.
async function watch(client, workflowId, json, say) {
  const events = [];
  const workflow = await client.watchWorkflow(workflowId, (event) => {
    const kind = event.kind.replace("WATCH_EVENT_KIND_", "").toLowerCase();
    events.push(kind);
    say(event.step ? `${kind}: step ${event.step.number} ${event.step.name}` : kind);
  }, { timeoutMs: 120000 });
  const status = workflow.status.replace("WORKFLOW_STATUS_", "").toLowerCase();
  say(`${status}: ${workflow.error || workflow.result_json}`);
  if (json) console.log(JSON.stringify({ workflow_id: workflowId, status, events }));
  return status === "completed" ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`example: ${error.message}`);
    process.exit(2);
  },
);
