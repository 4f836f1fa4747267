// Send a signal to a running workflow (a person's approval, an outside event).
//
//   node signal.js --coordinator 127.0.0.1:50051 --workflow-id 3f2a9c... --name approval \
//       --payload '{"approved": true}'
//
// Prints what happened (delivered to a waiting workflow, or buffered for its next wait); with
// --json, one JSON object. Exits 0 on success, 2 on any error (the gRPC status and message).
"use strict";

const { parseArgs } = require("node:util");
const { ConveyorClient } = require("./index.js");

async function main() {
  const { values } = parseArgs({
    options: {
      coordinator: { type: "string", default: "127.0.0.1:50051" },
      "workflow-id": { type: "string" },
      name: { type: "string" },
      payload: { type: "string", default: "null" },
      "idempotency-key": { type: "string", default: "" },
      json: { type: "boolean", default: false },
    },
  });
  if (!values["workflow-id"] || !values.name) throw new Error("--workflow-id and --name are required");
  const client = new ConveyorClient(values.coordinator);
  try {
    const sent = await client.signalWorkflow(values["workflow-id"], values.name, JSON.parse(values.payload), {
      idempotencyKey: values["idempotency-key"],
    });
    if (values.json) console.log(JSON.stringify({ delivered: sent.delivered, duplicate: sent.duplicate }));
    else console.log(`signal ${values.name}: ${sent.delivered ? "delivered" : "buffered"}`);
    return 0;
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`signal: ${error.message}`);
    process.exit(2);
  },
);
