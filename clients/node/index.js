// Conveyor's Node.js client: WorkflowService and AdminService over gRPC, promise-based.
//
// The services are loaded at run time straight from the .proto files in ../../protos (the wire
// contract every language shares), so every RPC there is callable here without generated code:
//
//   const { ConveyorClient } = require("./index.js");
//   const client = new ConveyorClient("127.0.0.1:50051");
//   const { workflow_id } = await client.startWorkflow("research", { topic: "tides" });
//   const workflow = await client.waitForWorkflow(workflow_id);   // pushed over WatchWorkflow
//   await client.watchWorkflow(workflow_id, (event) => console.log(event.kind));
//   const report = await client.admin.Diagnose({});
//   client.close();
//
// Fields keep their .proto names (snake_case); enums are their names ("WORKFLOW_STATUS_COMPLETED");
// int64 values are strings. A failed call rejects with a ConveyorError whose `code` is the gRPC
// status name (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE...; ALREADY_EXISTS for an idempotency key
// reused with other arguments, its details saying where they differ).
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const PROTO_FILES = ["conveyor/v1/workflow_service.proto", "conveyor/v1/admin_service.proto"];
const FINISHED = new Set(["WORKFLOW_STATUS_COMPLETED", "WORKFLOW_STATUS_FAILED", "WORKFLOW_STATUS_CANCELLED"]);
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

class ConveyorError extends Error {
  constructor(code, details) {
    super(`${code}: ${details}`);
    this.name = "ConveyorError";
    this.code = code;
    this.details = details;
  }
}

function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).conveyor.v1;
}

class ConveyorClient {
  // `options`: timeoutMs per call (default 30 s); credentials (default plaintext, e.g.
  // grpc.credentials.createSsl(ca) for TLS); token, sent as a bearer token (default
  // $CONVEYOR_TOKEN).
  constructor(address = "127.0.0.1:50051", options = {}) {
    const services = loadServices();
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.timeoutMs = options.timeoutMs || 30000;
    this.token = options.token || process.env.CONVEYOR_TOKEN || "";
    this._stubs = [
      new services.WorkflowService(address, credentials),
      new services.AdminService(address, credentials),
    ];
    // One promise-returning function per RPC, named as in the .proto: client.workflows.GetWorkflow(...).
    this.workflows = this._bind(this._stubs[0], services.WorkflowService.service);
    this.admin = this._bind(this._stubs[1], services.AdminService.service);
  }

  _bind(stub, service) {
    const methods = {};
    for (const [name, method] of Object.entries(service)) {
      // Streams (WatchWorkflow) have their own methods below.
      if (!method.responseStream) methods[name] = (request) => this._call(stub, name, request);
    }
    return methods;
  }

  _metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  _call(stub, method, request) {
    const metadata = this._metadata();
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      stub[method](request || {}, metadata, { deadline }, (error, response) => {
        if (error) reject(new ConveyorError(STATUS_NAMES[error.code] || String(error.code), error.details));
        else resolve(response);
      });
    });
  }

  // Start a workflow; `args` is an object (keyword arguments) or an array (positional).
  startWorkflow(name, args = {}, { idempotencyKey = "" } = {}) {
    return this.workflows.StartWorkflow({ name, args_json: JSON.stringify(args), idempotency_key: idempotencyKey });
  }

  // Send signal `name` to a running workflow: its next ctx.wait_for_signal(name) returns `payload`
  // (buffered until then). Resolves to {delivered, duplicate}; FAILED_PRECONDITION once it finished.
  signalWorkflow(workflowId, name, payload = null, { idempotencyKey = "" } = {}) {
    return this.workflows.SignalWorkflow({
      workflow_id: workflowId,
      name,
      payload_json: JSON.stringify(payload),
      idempotency_key: idempotencyKey,
    });
  }


  // Follow a workflow (WatchWorkflow): `onEvent` gets each message ({kind, workflow, step}; kind
  // "WATCH_EVENT_KIND_SNAPSHOT" first, "WATCH_EVENT_KIND_WORKFLOW_FINISHED" last) and the promise
  // resolves to the finished Workflow. One stream, no retries: waitForWorkflow re-watches.
  // `timeoutMs` bounds the whole stream (DEADLINE_EXCEEDED).
  watchWorkflow(workflowId, onEvent = () => {}, { timeoutMs = Infinity } = {}) {
    const options = Number.isFinite(timeoutMs) ? { deadline: new Date(Date.now() + timeoutMs) } : {};
    return new Promise((resolve, reject) => {
      let finished = null;
      const call = this._stubs[0].WatchWorkflow({ workflow_id: workflowId }, this._metadata(), options);
      call.on("data", (event) => {
        onEvent(event);
        if (FINISHED.has(event.workflow.status)) finished = event.workflow;
      });
      call.on("error", (error) => {
        if (finished) resolve(finished);
        else reject(new ConveyorError(STATUS_NAMES[error.code] || String(error.code), error.details));
      });
      call.on("end", () => {
        if (finished) resolve(finished);
        else reject(new ConveyorError("UNAVAILABLE", `the watch of ${workflowId} ended before it finished`));
      });
    });
  }

  // Resolve to the Workflow once it finishes. The coordinator pushes the finish (WatchWorkflow);
  // after a coordinator restart the wait watches again (while the coordinator stays unreachable
  // for at most the client's timeoutMs); an older coordinator without WatchWorkflow is polled
  // every `pollMs` (growing to 2 s).
  async waitForWorkflow(workflowId, { timeoutMs = Infinity, pollMs = 200 } = {}) {
    const deadline = Date.now() + timeoutMs;
    const stillRunning = () =>
      new ConveyorError("DEADLINE_EXCEEDED", `workflow ${workflowId} still running after ${timeoutMs} ms`);
    let retry = 50;
    let unreachableSince = null;
    for (;;) {
      try {
        return await this.watchWorkflow(workflowId, () => {
          unreachableSince = null;
          retry = 50;
        }, { timeoutMs: deadline - Date.now() });
      } catch (error) {
        if (error.code === "UNIMPLEMENTED") return this._pollForWorkflow(workflowId, deadline, timeoutMs, pollMs);
        if (error.code === "DEADLINE_EXCEEDED") throw stillRunning();
        if (error.code !== "UNAVAILABLE") throw error;
        unreachableSince = unreachableSince || Date.now();
        if (Date.now() - unreachableSince > this.timeoutMs) throw error;
        if (Date.now() + retry > deadline) throw stillRunning();
        // Jittered, so that the watchers of a restarted coordinator do not all come back at once.
        await new Promise((resolve) => setTimeout(resolve, retry * (0.5 + Math.random() / 2)));
        retry = Math.min(retry * 2, 2000);
      }
    }
  }

  async _pollForWorkflow(workflowId, deadline, timeoutMs, pollMs) {
    let interval = pollMs;
    for (;;) {
      const { workflow } = await this.workflows.GetWorkflow({ workflow_id: workflowId });
      if (FINISHED.has(workflow.status)) return workflow;
      if (Date.now() + interval > deadline) {
        throw new ConveyorError("DEADLINE_EXCEEDED", `workflow ${workflowId} still running after ${timeoutMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, interval));
      interval = Math.min(interval * 1.5, 2000);
    }
  }

  close() {
    for (const stub of this._stubs) stub.close();
  }
}

module.exports = { ConveyorClient, ConveyorError, PROTO_ROOT };
