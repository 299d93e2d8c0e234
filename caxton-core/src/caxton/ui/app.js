// The Caxton web console: plain JavaScript over the node's REST API (docs/console.md).
// Credentials live in this tab's sessionStorage and go in headers, never in cookies;
// every value from the API is written with textContent, never as HTML.
"use strict";

const COLORS = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599"];
const POLL_MS = 1000;
const HISTORY = 60;

const state = {
  credential: sessionStorage.getItem("caxton.credential"),
  kind: sessionStorage.getItem("caxton.kind") || "key",
  permissions: new Set(),
  view: "cluster",
  timer: null,
  rates: {},          // node -> [msg/s, ...]
  lastCounts: null,   // {at, byNode: {node: messages}, byAgent: {id: messages}}
  agentRates: {},
  members: [],
  latency: {},        // node -> [{at, routing, remote}] cumulative readings
  logStream: null,    // AbortController of the followed log stream
  logAfter: 0,        // seq of the last log line shown
  logAgent: null,
  kvValues: {},       // agent id -> key (base64) -> the value last shown
};
const LATENCY_WINDOW = 10;  // readings (about seconds) the latency chart's P99 spans

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.details || body.error)) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (state.credential) {
    if (state.kind === "token") headers.Authorization = `Bearer ${state.credential}`;
    else headers["X-API-Key"] = state.credential;
  }
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "omit",
    cache: "no-store",
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401) {
    showSignin("Sign in: the node asks for credentials.");
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// -- sign-in --------------------------------------------------------------------------

function showSignin(message) {
  stopPolling();
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

async function signIn(event) {
  event.preventDefault();
  state.credential = $("credential").value.trim();
  state.kind = $("credential-kind").value;
  sessionStorage.setItem("caxton.credential", state.credential);
  sessionStorage.setItem("caxton.kind", state.kind);
  $("credential").value = "";
  await start();
}

function signOut() {
  sessionStorage.removeItem("caxton.credential");
  state.credential = null;
  state.permissions = new Set();
  showSignin("Signed out.");
}

async function start() {
  let me;
  try {
    me = await api("/api/v1/whoami");
  } catch (error) {
    if (error.status === 403) showSignin(`Refused: ${error.message}`);
    else if (error.status !== 401) showSignin(`Cannot reach the node: ${error.message}`);
    return;
  }
  state.permissions = new Set(me.permissions);
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = !me.auth_enabled;
  $("who").textContent = me.auth_enabled
    ? `${me.identity} (${me.roles.join(", ") || "no role"})`
    : "auth off";
  for (const link of document.querySelectorAll("nav a[data-needs]")) {
    link.hidden = !state.permissions.has(link.dataset.needs);
  }
  $("deploy-form").hidden = !state.permissions.has("deploy");
  route();
}

// -- views ----------------------------------------------------------------------------

function route() {
  const [view, arg] = (location.hash.slice(1) || "cluster").split("/");
  state.view = view;
  for (const section of document.querySelectorAll(".view")) section.hidden = true;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  const section = $(`view-${view}`);
  if (!section) return;
  section.hidden = false;
  stopPolling();
  const refresh = {
    cluster: refreshCluster,
    agents: refreshAgents,
    agent: () => refreshAgent(decodeURIComponent(arg || "")),
    conversations: refreshConversations,
    conversation: () => refreshConversation(decodeURIComponent(arg || "")),
    audit: refreshAudit,
    dead: refreshDeadLetters,
  }[view];
  const tick = async () => {
    try {
      await Promise.all([refresh(), sampleRates()]);
    } catch (error) {
      if (error.status !== 401) say(error.message, true);
    }
  };
  tick();
  state.timer = setInterval(tick, POLL_MS);
}

function stopPolling() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
  stopLogs();
}

async function refreshCluster() {
  const [members, status, partition] = await Promise.all([
    api("/api/v1/cluster/members"),
    api("/api/v1/cluster/status"),
    api("/api/v1/cluster/partition"),
  ]);
  state.members = members.members;
  $("mode").textContent =
    `Seen from ${status.node_id}: ${status.status}, mode ${status.mode}, ` +
    `${status.nodes_reachable} of ${status.nodes_known} nodes reachable, ` +
    `${status.agents_total} agents`;
  const sides = $("sides");
  sides.replaceChildren();
  if (partition.partitioned) {
    for (const side of partition.partitions) {
      const kind = side.majority ? "majority" : "minority";
      const box = el("div", `${kind}${side.local ? " (this side)" : ""}: ${side.nodes.join(", ")}`,
        { class: `side ${kind}`, "data-side": kind });
      sides.append(box);
    }
  }
  const map = $("map");
  map.replaceChildren();
  for (const member of members.members) {
    const card = el("div", null, { class: "node", "data-node": member.node_id, "data-status": member.status });
    card.append(el("h3", member.node_id + (member.local ? " (this node)" : "")));
    card.append(el("div", member.status, { class: "status" }));
    card.append(el("div", `address ${member.address}`));
    card.append(el("div", `version ${member.version || "-"}`));
    card.append(el("div", `agents ${member.agents ?? "-"}`));
    if (member.cpu !== null && member.cpu !== undefined) card.append(el("div", `cpu ${member.cpu}%`));
    map.append(card);
  }
  drawChart();
  $("latency-panel").hidden = !state.permissions.has("metrics");
  if (state.permissions.has("metrics")) {
    await sampleLatency();
    drawLatency();
  }
}

async function sampleRates() {
  const agents = await api("/api/v1/agents?scope=cluster");
  const now = performance.now() / 1000;
  const byNode = {};
  const byAgent = {};
  for (const member of state.members) {
    if (member.status === "alive" || member.status === "suspect") byNode[member.node_id] = 0;
  }
  for (const agent of agents) {
    const handled = (agent.counters && agent.counters.messages_handled) || 0;
    byNode[agent.node_id] = (byNode[agent.node_id] || 0) + handled;
    byAgent[agent.id] = handled;
  }
  const last = state.lastCounts;
  if (last !== null) {
    const seconds = Math.max(0.001, now - last.at);
    for (const [node, count] of Object.entries(byNode)) {
      const rate = Math.max(0, (count - (last.byNode[node] || 0)) / seconds);
      const series = state.rates[node] || (state.rates[node] = []);
      series.push(rate);
      if (series.length > HISTORY) series.shift();
    }
    for (const [id, count] of Object.entries(byAgent)) {
      state.agentRates[id] = Math.max(0, (count - (last.byAgent[id] ?? count)) / seconds);
    }
  }
  state.lastCounts = { at: now, byNode, byAgent };
  state.agents = agents;
}

function drawChart() {
  const canvas = $("chart");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const nodes = Object.keys(state.rates).sort();
  const peak = Math.max(1, ...nodes.flatMap((n) => state.rates[n]));
  context.fillStyle = "#868e96";
  context.font = "12px sans-serif";
  context.fillText(`${peak.toFixed(1)} msg/s`, 4, 14);
  const legend = $("legend");
  legend.replaceChildren();
  nodes.forEach((node, index) => {
    const color = COLORS[index % COLORS.length];
    const series = state.rates[node];
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.beginPath();
    series.forEach((value, i) => {
      const x = (canvas.width * (HISTORY - series.length + i)) / (HISTORY - 1);
      const y = canvas.height - 4 - ((canvas.height - 24) * value) / peak;
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    const item = el("span", `${node}: ${(series[series.length - 1] || 0).toFixed(1)} msg/s`);
    const swatch = el("i");
    swatch.style.background = color;
    item.prepend(swatch);
    legend.append(item);
  });
}

// -- routing latency from the nodes' histograms -----------------------------------------

async function sampleLatency() {
  const data = await api("/api/v1/cluster/latency");
  for (const node of data.nodes) {
    const series = state.latency[node.node_id] || (state.latency[node.node_id] = []);
    series.push({ at: node.at, routing: node.routing, remote: node.remote_routing });
    if (series.length > HISTORY + LATENCY_WINDOW) series.shift();
  }
}

// The q-quantile (seconds) of what a histogram counted between two cumulative readings,
// interpolated within its bucket as Prometheus' histogram_quantile does; null if none.
function quantileBetween(older, newer, q) {
  const total = newer.count - older.count;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  for (let i = 0; i < newer.buckets.length; i++) {
    const [bound, count] = newer.buckets[i];
    const before = i > 0 ? newer.buckets[i - 1][1] - older.buckets[i - 1][1] : 0;
    const here = count - older.buckets[i][1];
    if (here >= rank) {
      if (bound === null) return lower;  // +Inf bucket: its lower bound
      const inBucket = here - before;
      return inBucket > 0 ? lower + (bound - lower) * ((rank - before) / inBucket) : bound;
    }
    if (bound !== null) lower = bound;
  }
  return lower;
}

// P99 (ms) per reading, over the readings of the last LATENCY_WINDOW seconds (fewer at
// first); null where nothing was timed in that window.
function latencySeries(readings, kind) {
  const points = [];
  for (let i = 1; i < readings.length; i++) {
    const older = readings[Math.max(0, i - LATENCY_WINDOW)][kind];
    const p99 = quantileBetween(older, readings[i][kind], 0.99);
    points.push(p99 === null ? null : p99 * 1000);
  }
  return points.slice(-HISTORY);
}

// Solid: a message's wait from send to delivery on the node; dashed: forwarding it to
// the node that runs its agent.
function drawLatency() {
  const canvas = $("latency-chart");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const nodes = Object.keys(state.latency).sort();
  const lines = {};
  for (const node of nodes) {
    lines[node] = {
      routing: latencySeries(state.latency[node], "routing"),
      remote: latencySeries(state.latency[node], "remote"),
    };
  }
  const values = nodes.flatMap((n) => [...lines[n].routing, ...lines[n].remote])
    .filter((v) => v !== null);
  const peak = Math.max(0.01, ...values);
  context.fillStyle = "#868e96";
  context.font = "12px sans-serif";
  context.fillText(`${peak.toFixed(2)} ms`, 4, 14);
  const legend = $("latency-legend");
  legend.replaceChildren();
  nodes.forEach((node, index) => {
    const color = COLORS[index % COLORS.length];
    for (const kind of ["routing", "remote"]) {
      const series = lines[node][kind];
      context.strokeStyle = color;
      context.lineWidth = 2;
      context.setLineDash(kind === "remote" ? [6, 4] : []);
      context.beginPath();
      let drawing = false;
      series.forEach((value, i) => {
        if (value === null) {
          drawing = false;
          return;
        }
        const x = (canvas.width * (HISTORY - series.length + i)) / (HISTORY - 1);
        const y = canvas.height - 4 - ((canvas.height - 24) * value) / peak;
        if (!drawing) context.moveTo(x, y);
        else context.lineTo(x, y);
        drawing = true;
      });
      context.stroke();
    }
    context.setLineDash([]);
    const latest = (series) => {
      const known = series.filter((v) => v !== null);
      return known.length ? `${known[known.length - 1].toFixed(2)} ms` : "-";
    };
    const readings = state.latency[node];
    const last = readings[readings.length - 1];
    const text = `${node}: on the node ${latest(lines[node].routing)}, ` +
      `to other nodes ${latest(lines[node].remote)} ` +
      `(${last.routing.count} + ${last.remote.count} timed)`;
    const item = el("span", text, { "data-node": node, "data-samples": String(last.routing.count + last.remote.count) });
    const swatch = el("i");
    swatch.style.background = color;
    item.prepend(swatch);
    legend.append(item);
  });
}

async function refreshAgents() {
  if (!state.agents) await sampleRates();
  const select = $("deploy-node");
  if (select.options.length <= 1 || state.members.length === 0) {
    state.members = (await api("/api/v1/cluster/members")).members;
    select.replaceChildren(el("option", "placed by the cluster", { value: "" }));
    for (const member of state.members) select.append(el("option", member.node_id, { value: member.node_id }));
  }
  const body = $("agents").tBodies[0];
  body.replaceChildren();
  for (const agent of state.agents) {
    const row = el("tr", null, { "data-agent": agent.name, "data-node": agent.node_id, "data-state": agent.state });
    const link = el("a", agent.name, { href: `#agent/${encodeURIComponent(agent.id)}` });
    const name = el("td");
    name.append(link);
    row.append(name, el("td", agent.state), el("td", agent.node_id));
    row.append(el("td", agent.counters ? agent.counters.messages_handled : "-"));
    row.append(el("td", (state.agentRates[agent.id] || 0).toFixed(1)));
    row.append(el("td", agent.limits ? agent.limits.max_fuel : "-"));
    row.append(el("td", agent.limits ? size(agent.limits.max_memory_bytes) : "-"));
    const actions = el("td");
    actions.append(...actionButtons(agent, async () => {
      await sampleRates();
      await refreshAgents();
    }));
    row.append(actions);
    body.append(row);
  }
}

function size(bytes) {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)}MB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)}KB`;
  return `${bytes}B`;
}

// The lifecycle actions the role allows in the agent's state, as buttons that confirm.
const ACTIONS = [
  ["suspend", "update", ["running"]],
  ["resume", "update", ["suspended"]],
  ["stop", "update", ["running", "suspended"]],
  ["start", "update", ["stopped", "failed", "loaded"]],
  ["move", "update", ["running", "ready", "suspended", "stopped", "loaded", "failed"]],
  ["remove", "remove", null],
];

function actionButtons(agent, done) {
  const buttons = [];
  for (const [action, permission, when] of ACTIONS) {
    if (!state.permissions.has(permission) || (when && !when.includes(agent.state))) continue;
    const button = el("button", action, { type: "button", "data-action": action });
    if (action === "move") {
      button.addEventListener("click", () => confirmMove(agent, done));
    } else {
      button.addEventListener("click", () => confirmThen(`${action} agent ${agent.name} on ${agent.node_id}?`,
        async () => {
          if (action === "remove") await api(`/api/v1/agents/${agent.id}`, { method: "DELETE" });
          else await api(`/api/v1/agents/${agent.id}/${action}`, { method: "POST" });
          say(`${action}: ${agent.name} done`);
          await done();
        }));
    }
    buttons.push(button);
  }
  return buttons;
}

// A live move (POST /api/v1/agents/{id}/move) to a node chosen among the alive members.
async function confirmMove(agent, done) {
  const members = (await api("/api/v1/cluster/members")).members;
  const targets = members.filter((m) => m.status === "alive" && m.node_id !== agent.node_id);
  if (targets.length === 0) {
    say(`no other alive node to move ${agent.name} to`, true);
    return;
  }
  const choice = $("confirm-choice");
  choice.replaceChildren(...targets.map((m) => el("option", m.node_id, { value: m.node_id })));
  confirmThen(`move agent ${agent.name} from ${agent.node_id} to`, async () => {
    const to = choice.value;
    const moved = await api(`/api/v1/agents/${agent.id}/move`, { method: "POST", body: { to } });
    say(`moved ${agent.name} from ${moved.moved_from} to ${moved.node_id}`);
    await done();
  }, choice);
}

// Ask first (with ``choice``, a select shown beside the question); run ``work`` on
// confirmation and say how it went.
function confirmThen(question, work, choice) {
  $("confirm-text").textContent = question;
  $("confirm-choice").hidden = choice === undefined;
  $("confirm").hidden = false;
  $("confirm-yes").onclick = async () => {
    $("confirm").hidden = true;
    try {
      await work();
    } catch (error) {
      say(`${question.replace(/\?$/, "")} failed: ${error.message}`, true);
    }
  };
  $("confirm-no").onclick = () => {
    $("confirm").hidden = true;
  };
}

async function deploy(event) {
  event.preventDefault();
  const file = $("deploy-file").files[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  const name = $("deploy-name").value.trim() || file.name.replace(/\.wasm$/, "");
  const body = { name, wasm_module: btoa(binary) };
  if ($("deploy-node").value) body.target_node = $("deploy-node").value;
  confirmThen(`deploy ${name}${body.target_node ? ` on ${body.target_node}` : ""}?`, async () => {
    const agent = await api("/api/v1/agents", { method: "POST", body });
    say(`deployed ${agent.name} on ${agent.node_id}`);
    await sampleRates();
    await refreshAgents();
  });
}

async function refreshAgent(id) {
  const agent = await api(`/api/v1/agents/${encodeURIComponent(id)}`);
  $("agent-title").textContent = `Agent ${agent.name}`;
  $("view-agent").dataset.agent = agent.name;
  const body = $("agent-details").tBodies[0];
  body.replaceChildren();
  const rows = [
    ["ID", agent.id],
    ["State", agent.state],
    ["Node", agent.node_id],
    ["Module", agent.module_sha256],
    ...Object.entries(agent.limits || {}).map(([k, v]) => [k, v]),
    ...Object.entries(agent.counters || {}).map(([k, v]) => [k, v]),
    ["Last error", agent.last_error || "-"],
  ];
  for (const [label, value] of rows) {
    const row = el("tr");
    row.append(el("th", label), el("td", value));
    body.append(row);
  }
  const actions = $("agent-actions");
  actions.replaceChildren(...actionButtons(agent, () => refreshAgent(id)));
  if (state.logAgent !== agent.id) startLogs(agent).catch((error) => say(`logs: ${error.message}`, true));
  await Promise.all([refreshState(agent), refreshAgentConversations(agent), refreshAgentDead(agent)]);
}

// Keys and sizes on every tick; a value only when asked ("show": reading one needs the
// update permission and is audited, so the page does not poll values).
async function refreshState(agent) {
  const mayRead = state.permissions.has("update");
  const listing = await api(`/api/v1/agents/${agent.id}/state?limit=50`);
  $("kv-summary").textContent = `${listing.keys_total} keys, ${size(listing.bytes)}` +
    (mayRead ? "" : " (values need the update permission)") +
    (listing.next ? `; the first ${listing.entries.length} shown` : "");
  $("kv-form").hidden = !mayRead;
  const shown = state.kvValues[agent.id] || (state.kvValues[agent.id] = {});
  const body = $("kv").tBodies[0];
  body.replaceChildren();
  for (const entry of listing.entries) {
    const name = entry.key === null ? `(base64) ${entry.key_base64}` : entry.key;
    const row = el("tr", null, { "data-key": name });
    const value = el("td", shown[entry.key_base64] ?? "-", { class: "value" });
    row.append(el("td", name), el("td", size(entry.size)), value);
    const cell = el("td");
    if (mayRead) {
      const show = el("button", "show", { type: "button", "data-action": "show-value" });
      show.addEventListener("click", async () => {
        try {
          const got = await api(`/api/v1/agents/${agent.id}/state/${stateKey(entry)}`);
          shown[entry.key_base64] = got.value === null ? `(base64) ${got.value_base64}` : got.value;
          value.textContent = shown[entry.key_base64];
        } catch (error) {
          say(`reading ${name} failed: ${error.message}`, true);
        }
      });
      const remove = el("button", "delete", { type: "button", "data-action": "delete-key" });
      remove.addEventListener("click", () => confirmThen(`delete key ${name} of ${agent.name}?`,
        async () => {
          await api(`/api/v1/agents/${agent.id}/state/${stateKey(entry)}`, { method: "DELETE" });
          say(`deleted ${name}`);
          await refreshState(agent);
        }));
      cell.append(show, remove);
    }
    row.append(cell);
    body.append(row);
  }
  $("kv-form").onsubmit = (event) => {
    event.preventDefault();
    const key = $("kv-key").value;
    const text = $("kv-value").value;
    confirmThen(`set ${key} of ${agent.name}?`, async () => {
      const entry = await api(`/api/v1/agents/${agent.id}/state/${encodeURIComponent(key)}`,
        { method: "PUT", body: { value: text } });
      shown[entry.key_base64] = entry.value;
      say(`set ${key}`);
      await refreshState(agent);
    });
  };
}

function stateKey(entry) {
  if (entry.key !== null) return encodeURIComponent(entry.key);
  const url = entry.key_base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${url}?encoding=base64`;
}

// -- live logs: the agent's log stream (JSON lines) while its page is open -------------

function stopLogs() {
  if (state.logStream) state.logStream.abort();
  state.logStream = null;
  state.logAgent = null;
}

function logLine(line) {
  return `${timestamp(line.at)} ${line.level.toUpperCase().padEnd(5)} ${line.text}\n`;
}

async function startLogs(agent) {
  stopLogs();
  state.logAgent = agent.id;
  state.logAfter = 0;
  const pre = $("agent-logs");
  pre.textContent = "";
  const first = await api(`/api/v1/agents/${agent.id}/logs`);
  for (const line of first.lines) {
    pre.append(logLine(line));
    state.logAfter = Math.max(state.logAfter, line.seq);
  }
  pre.scrollTop = pre.scrollHeight;
  if ($("logs-follow").checked) followLogs(agent);
}

async function followLogs(agent) {
  const controller = new AbortController();
  state.logStream = controller;
  state.logAgent = agent.id;
  const headers = {};
  if (state.credential) {
    if (state.kind === "token") headers.Authorization = `Bearer ${state.credential}`;
    else headers["X-API-Key"] = state.credential;
  }
  const pre = $("agent-logs");
  try {
    const response = await fetch(
      `/api/v1/agents/${agent.id}/logs?follow=true&after=${state.logAfter}`,
      { headers, credentials: "omit", cache: "no-store", signal: controller.signal });
    if (!response.ok) throw new ApiError(response.status, null);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const text of lines) {
        if (!text) continue;
        const line = JSON.parse(text);
        if (line.seq <= state.logAfter) continue;
        state.logAfter = line.seq;
        pre.append(logLine(line));
        pre.scrollTop = pre.scrollHeight;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") say(`log stream: ${error.message}`, true);
  }
}

async function refreshAgentConversations(agent) {
  const data = await api(`/api/v1/conversations?scope=cluster&limit=20&participant=${encodeURIComponent(agent.name)}`);
  fillConversations($("agent-conversations"), data.conversations);
}

async function refreshAgentDead(agent) {
  const data = await api(`/api/v1/queues/dead-letters?scope=cluster&limit=50&receiver=${encodeURIComponent(agent.name)}`);
  const body = $("agent-dead").tBodies[0];
  body.replaceChildren();
  for (const letter of data.dead_letters) {
    const message = letter.message || {};
    const row = el("tr", null, { "data-message": letter.message_id });
    for (const value of [timestamp(letter.at), letter.node_id, message.performative, message.sender, letter.reason]) {
      row.append(el("td", value ?? "-"));
    }
    body.append(row);
  }
}

// -- conversations and their sequence diagrams ------------------------------------------

function fillConversations(table, conversations) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of conversations) {
    const row = el("tr", null, { "data-conversation": c.conversation_id });
    const link = el("a", c.conversation_id, { href: `#conversation/${encodeURIComponent(c.conversation_id)}` });
    const cell = el("td");
    cell.append(link);
    row.append(el("td", timestamp(c.updated_at)), cell, el("td", c.protocol || "-"), el("td", c.state),
      el("td", c.participants.join(", ")), el("td", c.message_count));
    body.append(row);
  }
}

async function refreshConversations() {
  const data = await api("/api/v1/conversations?scope=cluster&limit=100");
  fillConversations($("conversations"), data.conversations);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function refreshConversation(id) {
  const c = await api(`/api/v1/conversations/${encodeURIComponent(id)}?scope=cluster`);
  $("conversation-title").textContent = `Conversation ${c.conversation_id}`;
  $("conversation-summary").textContent =
    `${c.protocol || "no protocol"}, ${c.state}, started by ${c.initiator}, ` +
    `${c.message_count} messages, ${c.messages.length} drawn`;
  drawSequence(c);
}

function drawSequence(c) {
  const diagram = $("sequence");
  const lanes = [];
  for (const m of c.messages) {
    for (const name of [m.sender, m.receiver]) if (!lanes.includes(name)) lanes.push(name);
  }
  for (const name of c.participants) if (!lanes.includes(name)) lanes.push(name);
  const gap = 180;
  const top = 50;
  const step = 36;
  const width = Math.max(300, 90 + gap * (lanes.length - 1) + 90);
  const height = top + 30 + step * c.messages.length + 20;
  diagram.setAttribute("width", width);
  diagram.setAttribute("height", height);
  diagram.replaceChildren();
  const x = (name) => 90 + gap * lanes.indexOf(name);
  for (const name of lanes) {
    const lane = svg("g", { class: "lane", "data-lane": name });
    lane.append(svg("line", { class: "lifeline", x1: x(name), y1: top, x2: x(name), y2: height - 10 }));
    lane.append(svg("rect", { class: "head", x: x(name) - 80, y: 8, width: 160, height: 28, rx: 5 }));
    lane.append(svg("text", { x: x(name), y: 27, "text-anchor": "middle" }, name));
    diagram.append(lane);
  }
  const start = c.messages.length ? c.messages[0].at : 0;
  c.messages.forEach((m, i) => {
    const y = top + 30 + step * i;
    const from = x(m.sender);
    const to = x(m.receiver);
    const direction = to >= from ? 1 : -1;
    const group = svg("g", { class: "message", "data-from": m.sender, "data-to": m.receiver,
      "data-performative": m.performative });
    group.append(svg("line", { class: `arrow ${m.performative}`, x1: from, y1: y, x2: to - 8 * direction, y2: y }));
    group.append(svg("polygon", { class: "tip",
      points: `${to},${y} ${to - 8 * direction},${y - 4} ${to - 8 * direction},${y + 4}` }));
    const label = `${m.performative}  +${((m.at - start) * 1000).toFixed(1)} ms`;
    group.append(svg("text", { x: (from + to) / 2, y: y - 6, "text-anchor": "middle" }, label));
    diagram.append(group);
  });
}

function timestamp(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

async function refreshDeadLetters() {
  const data = await api("/api/v1/queues/dead-letters?scope=cluster&limit=100");
  const body = $("dead").tBodies[0];
  body.replaceChildren();
  for (const letter of data.dead_letters) {
    const message = letter.message || {};
    const row = el("tr", null, { "data-message": letter.message_id });
    for (const value of [timestamp(letter.at), letter.node_id, letter.receiver, message.performative,
      message.sender, letter.reason, letter.message_id]) {
      row.append(el("td", value ?? "-"));
    }
    body.append(row);
  }
}

async function refreshAudit() {
  const data = await api("/api/v1/audit?limit=200");
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const entry of data.entries) {
    const row = el("tr", null, { "data-result": entry.result });
    for (const value of [timestamp(entry.time), entry.identity, entry.action, entry.target, entry.result, entry.source]) {
      row.append(el("td", value ?? "-"));
    }
    body.append(row);
  }
}

// -- wiring ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("deploy-form").addEventListener("submit", deploy);
  window.addEventListener("hashchange", route);
  $("logs-follow").addEventListener("change", () => {
    const id = state.logAgent;
    if (state.logStream) state.logStream.abort();
    state.logStream = null;
    if ($("logs-follow").checked && id) followLogs({ id });
  });
  start();
});
