// Conveyor's Node.js client: WorkflowService and AdminService over gRPC, promise-based.
//
// The services are loaded at run time straight from the .proto files in ../../protos (the wire
// contract every language shares), so every RPC there is callable here without generated code:
//
//   const { ConveyorClient } = require("./index.js");
//   const client = new ConveyorClient("127.0.0.1:50051");   // or "a:50051,b:50051": follows the leader
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
// A standby refuses work with UNAVAILABLE and this trailing metadata (the leader's address, empty
// while it knows of none): the call was not applied (conveyor/errors.py LEADER_METADATA_KEY).
const LEADER_METADATA_KEY = "conveyor-leader";
// Pings on every channel, so that a watch on a stalled coordinator (SIGSTOPped, cut off) fails
// within 15 s and moves on instead of hanging; the coordinator accepts pings every 5 s.
const CHANNEL_OPTIONS = { "grpc.keepalive_time_ms": 10000, "grpc.keepalive_timeout_ms": 5000 };
// Calls that change nothing: retried on any UNAVAILABLE, at the next address or the named leader.
// Others are retried only when they certainly did nothing (a standby refused them, or no
// connection was made) or carry an idempotency key (a repeat resolves to the first).
const READ_ONLY = new Set([
  "GetWorkflow", "ListWorkflows", "CountWorkflows", "ExplainWorkflow", "WatchWorkflow", "Diagnose",
]);

// "a:1, b:2" or ["a:1", "b:2"] -> ["a:1", "b:2"] (order kept, duplicates dropped).
function parseAddresses(target) {
  const parts = Array.isArray(target) ? target : String(target).split(",");
  const addresses = [...new Set(parts.map((part) => String(part).trim()).filter(Boolean))];
  if (!addresses.length) {
    throw new ConveyorError("INVALID_ARGUMENT", `no coordinator address in ${JSON.stringify(target)}; give HOST:PORT, or several separated by commas`);
  }
  return addresses;
}

// The leader a refusing standby named: undefined when the call was not refused by a standby,
// "" when it was but the standby knows of no leader.
function leaderHint(error) {
  const values = error && error.metadata && typeof error.metadata.get === "function" ? error.metadata.get(LEADER_METADATA_KEY) : [];
  if (!values.length) return undefined;
  return String(values[0]);
}

function toConveyorError(error) {
  const converted = new ConveyorError(STATUS_NAMES[error.code] || String(error.code), error.details);
  converted.leader = leaderHint(error);
  return converted;
}

function sleep(ms) {
  // Jittered, so that the clients of a failed coordinator do not all come back at once.
  return new Promise((resolve) => setTimeout(resolve, ms * (0.5 + Math.random() / 2)));
}

class ConveyorError extends Error {
  constructor(code, details) {
    super(`${code}: ${details}`);
    this.name = "ConveyorError";
    this.code = code;
    this.details = details;
    // Set (possibly "") when a standby refused the call: its leader's address, if it knows it.
    this.leader = undefined;
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
  // `address`: "host:port", several comma-separated ("a:50051,b:50051") or an array of them; with
  // standby coordinators the client finds the leader among them and follows it through a failover.
  // `options`: timeoutMs per call (default 30 s; also how long a call keeps looking for a leader);
  // credentials (default plaintext, e.g. grpc.credentials.createSsl(ca) for TLS); token, sent as a
  // bearer token (default $CONVEYOR_TOKEN).
  constructor(address = "127.0.0.1:50051", options = {}) {
    this._services = loadServices();
    this._credentials = options.credentials || grpc.credentials.createInsecure();
    this.timeoutMs = options.timeoutMs || 30000;
    this.token = options.token || process.env.CONVEYOR_TOKEN || "";
    this.addresses = parseAddresses(address);
    // The address calls go to; moves to the leader a standby names, or on to the next address.
    this.current = this.addresses[0];
    // How many times the client moved (for logs and tests).
    this.moves = 0;
    this._channels = new Map(); // address -> {workflows, admin} stubs
    // One promise-returning function per RPC, named as in the .proto: client.workflows.GetWorkflow(...).
    this.workflows = this._bind("workflows", this._services.WorkflowService.service);
    this.admin = this._bind("admin", this._services.AdminService.service);
  }

  _stubs(address = this.current) {
    let stubs = this._channels.get(address);
    if (!stubs) {
      stubs = {
        workflows: new this._services.WorkflowService(address, this._credentials, CHANNEL_OPTIONS),
        admin: new this._services.AdminService(address, this._credentials, CHANNEL_OPTIONS),
      };
      this._channels.set(address, stubs);
    }
    return stubs;
  }

  // After a call to `address` failed with `error`: move to the leader a standby named, or, for an
  // unreachable or stalled coordinator, to the next address. A failure at an address already
  // left behind moves nothing (another call followed).
  _follow(address, error) {
    if (address !== this.current || !["UNAVAILABLE", "DEADLINE_EXCEEDED"].includes(error.code)) return;
    let target;
    if (error.leader) {
      if (error.leader === this.current) return;
      if (!this.addresses.includes(error.leader)) this.addresses.push(error.leader);
      target = error.leader;
    } else if (this.addresses.length > 1) {
      target = this.addresses[(this.addresses.indexOf(this.current) + 1) % this.addresses.length];
    } else {
      return;
    }
    this.current = target;
    this.moves += 1;
  }

  _bind(service, definition) {
    const methods = {};
    for (const [name, method] of Object.entries(definition)) {
      // Streams (WatchWorkflow) have their own methods below.
      if (!method.responseStream) methods[name] = (request) => this._call(service, name, request);
    }
    return methods;
  }

  _metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  _callOnce(address, service, method, request, deadline) {
    return new Promise((resolve, reject) => {
      this._stubs(address)[service][method](request || {}, this._metadata(), { deadline }, (error, response) => {
        if (error) reject(toConveyorError(error));
        else resolve(response);
      });
    });
  }

  // Whether the call never left this process: grpc-js made no connection (refused, unresolvable).
  static _undelivered(error) {
    const details = error.details || "";
    return details.includes("No connection established") || details.includes("ECONNREFUSED");
  }

  // Whether a call that failed with `error` may be sent again: it changed nothing (a read, or a
  // standby refused it), or repeating it is harmless (an idempotency key).
  static _retryable(method, request, error) {
    if (error.code !== "UNAVAILABLE") return false;
    if (error.leader !== undefined || READ_ONLY.has(method) || ConveyorClient._undelivered(error)) return true;
    if (request && request.idempotency_key) return true;
    if (method === "StartWorkflows" && request && Array.isArray(request.workflows) && request.workflows.length) {
      return request.workflows.every((each) => each.idempotency_key);
    }
    return false;
  }

  // One call, following the leader: on UNAVAILABLE it moves (to the named leader, or the next
  // address) and, if the call is safe to repeat, tries again with jittered backoff until timeoutMs.
  async _call(service, method, request) {
    const deadline = new Date(Date.now() + this.timeoutMs);
    let backoff = 50;
    for (let attempt = 0; ; attempt++) {
      const address = this.current;
      try {
        return await this._callOnce(address, service, method, request, deadline);
      } catch (error) {
        this._follow(address, error);
        if (!ConveyorClient._retryable(method, request, error)) throw error;
        // Straight to a named leader the first time; otherwise wait, as a failover takes a while.
        const hinted = error.leader && attempt === 0;
        if (!hinted) {
          if (Date.now() + backoff >= deadline.getTime()) throw error;
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 2000);
        }
      }
    }
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
      const address = this.current;
      const call = this._stubs(address).workflows.WatchWorkflow({ workflow_id: workflowId }, this._metadata(), options);
      call.on("data", (event) => {
        onEvent(event);
        if (FINISHED.has(event.workflow.status)) finished = event.workflow;
      });
      call.on("error", (error) => {
        if (finished) return resolve(finished);
        const converted = toConveyorError(error);
        // A watch's own deadline says nothing about the coordinator: only UNAVAILABLE moves it.
        if (converted.code === "UNAVAILABLE") this._follow(address, converted);
        reject(converted);
      });
      call.on("end", () => {
        if (finished) resolve(finished);
        else reject(new ConveyorError("UNAVAILABLE", `the watch of ${workflowId} ended before it finished`));
      });
    });
  }

  // Resolve to the Workflow once it finishes. The coordinator pushes the finish (WatchWorkflow);
  // after a coordinator restart or failover the wait watches again (at the new leader) (while the coordinator stays unreachable
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
    for (const stubs of this._channels.values()) {
      stubs.workflows.close();
      stubs.admin.close();
    }
    this._channels.clear();
  }
}

module.exports = { ConveyorClient, ConveyorError, PROTO_ROOT, LEADER_METADATA_KEY, parseAddresses };
