// The live status page: polls the coordinator's JSON endpoints and redraws. No libraries.
"use strict";

const OVERVIEW_EVERY_MS = 2000;
const STAIRCASE_EVERY_MS = 3000;
const STAIRCASE_ROWS = 500;
const MAX_CANVAS_HEIGHT = 600;
// Step colours as in the seed's benchmark view: 1st blue, 2nd green, 3rd orange, 4th red.
const STEP_COLOURS = [[31, 119, 180], [44, 160, 44], [255, 127, 14], [214, 39, 40]];
const QUEUED_ALPHA = 0.3;

const $ = (id) => document.getElementById(id);

function text(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function seconds(value) {
  if (value === null || value === undefined) return "-";
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function clock(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-";
}

function fillTable(table, rows, emptyMessage) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = table.tHead.rows[0].cells.length;
    td.textContent = emptyMessage;
    return;
  }
  for (const cells of rows) {
    const tr = body.insertRow();
    for (const cell of cells) {
      const td = tr.insertCell();
      if (typeof cell === "object" && cell !== null) {
        td.textContent = text(cell.text);
        td.className = cell.className || "";
      } else {
        td.textContent = text(cell);
      }
    }
  }
}

async function fetchJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function showError(error) {
  const banner = $("error");
  if (error) {
    banner.textContent = `cannot reach the coordinator (${error.message}); retrying`;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

function renderOverview(overview) {
  $("cluster").textContent =
    `epoch ${overview.epoch} · ${overview.shard_count} shards · updated ${clock(overview.generated_at)}`;
  for (const status of ["running", "completed", "failed", "cancelled"]) {
    $(`total-${status}`).textContent = overview.workflows[status];
  }
  const sum = (key) => overview.shards.reduce((total, shard) => total + shard[key], 0);
  $("total-queued").textContent = sum("queued");
  $("total-claimed").textContent = sum("claimed");
  $("total-delayed").textContent = sum("delayed");
  $("total-replay").textContent = overview.replay_queue;
  $("total-executors").textContent = overview.executors.filter((e) => e.state === "live").length;

  const busy = overview.shards
    .filter((s) => s.queued || s.delayed || s.claimed || s.replay)
    .sort((a, b) => (b.queued + b.delayed + b.claimed) - (a.queued + a.delayed + a.claimed) || a.shard - b.shard);
  $("shards-summary").textContent =
    `${busy.length} of ${overview.shard_count} shards have work; the busiest first.`;
  fillTable(
    $("shards"),
    busy.slice(0, 50).map((s) => [
      s.shard, s.queued, s.delayed, s.claimed, seconds(s.oldest_age_s), s.replay,
      s.executors.length ? s.executors.join(", ") : { text: "no live executor", className: "error-text" },
    ]),
    "no shard has work",
  );
  fillTable(
    $("executors"),
    overview.executors.map((e) => [
      { text: e.id, className: "id" }, e.state, e.epoch, `${e.claimed} / ${e.capacity}`, e.shards,
      e.task_kinds.join(", "), `${seconds(e.heartbeat_age_s)} ago`,
    ]),
    "no executor is connected",
  );
  fillTable(
    $("failures"),
    overview.failures.map((f) => [
      { text: f.id, className: "id" }, f.name, clock(f.completed_at), { text: f.error, className: "error-text" },
    ]),
    "no workflow has failed",
  );
}

function drawStaircase(staircase) {
  const canvas = $("staircase");
  const rows = staircase.rows;
  const rowHeight = Math.max(1, Math.min(12, Math.floor(MAX_CANVAS_HEIGHT / Math.max(rows.length, 1))));
  canvas.width = Math.max(320, Math.floor(canvas.clientWidth || 960));
  canvas.height = Math.max(40, rows.length * rowHeight);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  $("staircase-rows").textContent = rows.length;
  canvas.dataset.rows = rows.length;
  canvas.dataset.rowHeight = rowHeight;
  if (rows.length === 0) {
    $("staircase-axis").textContent = "no workflow yet";
    return;
  }
  const start = rows[0].created_at;
  let end = staircase.now;
  for (const row of rows) end = Math.max(end, row.completed_at || 0);
  const span = Math.max(end - start, 1);
  const x = (ms) => ((ms - start) / span) * canvas.width;
  const bar = (from, to, y, colour, alpha) => {
    if (from === null || to === null || to < from) return;
    context.fillStyle = `rgba(${colour[0]}, ${colour[1]}, ${colour[2]}, ${alpha})`;
    const left = Math.floor(x(from));
    context.fillRect(left, y, Math.max(1, Math.ceil(x(to)) - left), rowHeight);
  };
  rows.forEach((row, index) => {
    const y = index * rowHeight;
    row.steps.forEach((step, ordinal) => {
      const colour = STEP_COLOURS[ordinal % STEP_COLOURS.length];
      const finished = step.completed_at;
      const running = step.status === "running";
      const queuedUntil = step.started_at || (running ? staircase.now : finished);
      bar(step.created_at, queuedUntil, y, colour, QUEUED_ALPHA);
      if (step.started_at) bar(step.started_at, finished || staircase.now, y, colour, 1);
    });
  });
  $("staircase-axis").textContent =
    `from ${clock(start)} to ${clock(end)} (${seconds(span / 1000)} across)`;
}

function poll(path, render, everyMs) {
  const tick = async () => {
    try {
      render(await fetchJson(path));
      showError(null);
    } catch (error) {
      showError(error);
    }
    setTimeout(tick, everyMs);
  };
  tick();
}

poll("/api/overview", renderOverview, OVERVIEW_EVERY_MS);
poll(`/api/staircase?rows=${STAIRCASE_ROWS}`, drawStaircase, STAIRCASE_EVERY_MS);
