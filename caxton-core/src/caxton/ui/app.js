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
};

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
    for (const [action, permission, when] of [
      ["suspend", "update", ["running"]],
      ["resume", "update", ["suspended"]],
      ["stop", "update", ["running", "suspended"]],
      ["start", "update", ["stopped", "failed", "loaded"]],
      ["remove", "remove", null],
    ]) {
      if (!state.permissions.has(permission) || (when && !when.includes(agent.state))) continue;
      const button = el("button", action, { type: "button", "data-action": action });
      button.addEventListener("click", () => confirmAction(action, agent));
      actions.append(button);
    }
    row.append(actions);
    body.append(row);
  }
}

function size(bytes) {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)}MB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)}KB`;
  return `${bytes}B`;
}

function confirmAction(action, agent) {
  $("confirm-text").textContent = `${action} agent ${agent.name} on ${agent.node_id}?`;
  $("confirm").hidden = false;
  $("confirm-yes").onclick = async () => {
    $("confirm").hidden = true;
    try {
      if (action === "remove") await api(`/api/v1/agents/${agent.id}`, { method: "DELETE" });
      else await api(`/api/v1/agents/${agent.id}/${action}`, { method: "POST" });
      say(`${action}: ${agent.name} done`);
      await sampleRates();
      await refreshAgents();
    } catch (error) {
      say(`${action} ${agent.name} failed: ${error.message}`, true);
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
  $("confirm-text").textContent = `deploy ${name}${body.target_node ? ` on ${body.target_node}` : ""}?`;
  $("confirm").hidden = false;
  $("confirm-yes").onclick = async () => {
    $("confirm").hidden = true;
    try {
      const agent = await api("/api/v1/agents", { method: "POST", body });
      say(`deployed ${agent.name} on ${agent.node_id}`);
      await sampleRates();
      await refreshAgents();
    } catch (error) {
      say(`deploy ${name} failed: ${error.message}`, true);
    }
  };
  $("confirm-no").onclick = () => {
    $("confirm").hidden = true;
  };
}

async function refreshAgent(id) {
  const agent = await api(`/api/v1/agents/${encodeURIComponent(id)}`);
  $("agent-title").textContent = `Agent ${agent.name}`;
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
}

function timestamp(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

async function refreshDeadLetters() {
  const data = await api("/api/v1/queues/dead-letters?limit=100");
  const body = $("dead").tBodies[0];
  body.replaceChildren();
  for (const letter of data.dead_letters) {
    const message = letter.message || {};
    const row = el("tr", null, { "data-message": letter.message_id });
    for (const value of [timestamp(letter.at), letter.receiver, message.performative,
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
  start();
});
