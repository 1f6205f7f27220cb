// The live fleet table: load a snapshot over HTTP, then apply `ws/fleet/` events; on every (re)connect
// the snapshot is loaded again, so nothing is missed while the socket was down. Events that arrive while
// a snapshot is loading are held and applied after it. Phone-provided text is only ever set with
// textContent, never as HTML.

import { el } from "./dom.js";

const table = document.getElementById("fleet-table");
const tbody = table.querySelector("tbody");
const indicator = document.getElementById("live-indicator");
const params = new URLSearchParams(window.location.search);
const filter = {
  status: params.get("status") || "", tag: (params.get("tag") || "").toLowerCase(), q: (params.get("q") || "").toLowerCase(),
  // Retired phones (kept for their past jobs) show only when asked for, as on the server (devices/filters.py).
  showRetired: ["1", "true", "on"].includes((params.get("show_retired") || "").toLowerCase()),
};
const rows = new Map(); // device id -> latest row

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
let attempt = 0;
let pending = null; // events held while a snapshot loads

function setIndicator(state, text) {
  indicator.classList.remove("connected", "reconnecting");
  if (state) indicator.classList.add(state);
  indicator.querySelector(".label").textContent = text;
}

function matches(row) {
  if (filter.status && row.status !== filter.status) return false;
  if (row.status === "retired" && !filter.showRetired && filter.status !== "retired") return false;
  if (filter.tag && !row.tags.includes(filter.tag)) return false;
  if (filter.q) {
    const haystack = `${row.name} ${row.model} ${row.address}`.toLowerCase();
    if (!haystack.includes(filter.q)) return false;
  }
  return true;
}

function timeAgo(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function batteryCell(row) {
  if (row.battery_level === null || row.battery_level === undefined) return el("span", { className: "muted", textContent: "–" });
  const level = row.battery_level;
  const fill = el("span", { className: "fill" + (level < 20 ? " low" : level < 50 ? " mid" : "") });
  fill.style.width = `${level}%`;
  const wrap = el("span", { className: "battery", title: `${level}%${row.charging ? ", charging" : ""}` },
    [el("span", { className: "bar" }, [fill]), `${level}%`]);
  if (row.charging) wrap.append(" ", el("span", { className: "charging", textContent: "⚡", "aria-label": "charging" }));
  return wrap;
}

// Model, and for virtual phones the availability model their lab scenario gives them.
function modelCell(row) {
  const cell = el("td", { textContent: `${row.manufacturer || ""} ${row.model || ""}`.trim() });
  if (row.availability_model) {
    cell.append(el("div", { className: "muted small", title: "availability model", textContent: row.availability_model, dataset: { testid: "availability-model" } }));
  }
  return cell;
}

function runtimeTag(row) {
  const runtime = row.runtime || "exec";
  return el("span", { className: `runtime-tag runtime-${runtime}`, textContent: runtime, title: "how this phone runs the agent", dataset: { testid: "runtime" } });
}

function renderRow(row) {
  const link = el("a", { href: table.dataset.detailUrlTemplate.replace("/0/", `/${row.id}/`), textContent: row.name });
  const name = el("td", {}, [link, el("div", { className: "muted small mono", textContent: row.address })]);
  const badge = el("span", { className: `badge badge-${row.status_colour}`, textContent: row.status_label, title: row.status_reason || "" });
  badge.dataset.testid = "status";
  const status = el("td", {}, [badge, " ", runtimeTag(row)]);
  // Why a resident or app agent is not ready ("agent not running", "wrong agent secret", "agent
  // outdated, upgrading") is written out, not only in the badge's tooltip.
  if (row.runtime && row.runtime !== "exec" && row.status_reason && row.status_reason.includes("agent")) {
    status.append(el("div", { className: "small agent-reason", textContent: row.status_reason, dataset: { testid: "agent-reason" } }));
  }
  const android = el("td", {}, [row.android_release || "–"]);
  if (row.sdk_int) android.append(" ", el("span", { className: "muted small", textContent: `(SDK ${row.sdk_int})` }));
  const seen = row.last_seen_at ? el("time", { dateTime: row.last_seen_at, textContent: timeAgo(row.last_seen_at) })
                                : el("span", { className: "muted", textContent: "never" });
  const tags = el("td", {}, row.tags.map((t) => el("span", { className: "tag", textContent: t })));
  return el("tr", { dataset: { deviceId: String(row.id) } }, [
    name, status, el("td", {}, [batteryCell(row)]),
    modelCell(row), android, el("td", {}, [seen]), tags,
  ]);
}

function renderEmpty() {
  tbody.querySelector("tr.empty-row")?.remove();
  if (tbody.children.length === 0) {
    tbody.append(el("tr", { className: "empty-row" }, [el("td", { colSpan: 7, className: "empty", textContent: "No phones match." })]));
  }
}

function placeRow(row, flash) {
  const existing = tbody.querySelector(`tr[data-device-id="${row.id}"]`);
  if (!matches(row)) {
    existing?.remove();
    return;
  }
  const fresh = renderRow(row);
  if (flash) fresh.classList.add("flash");
  if (existing) {
    existing.replaceWith(fresh);
    return;
  }
  tbody.querySelector("tr.empty-row")?.remove();
  // keep the server's order (by name)
  const after = [...tbody.querySelectorAll("tr[data-device-id]")].find((tr) => rows.get(Number(tr.dataset.deviceId))?.name > row.name);
  tbody.insertBefore(fresh, after || null);
}

function setCounts(counts) {
  if (!counts) return;
  let total = 0;
  for (const [status, n] of Object.entries(counts)) {
    if (status !== "retired") total += n; // the lab's phones; retired ones are counted on their own badge
    const node = document.querySelector(`[data-count="${status}"]`);
    if (node) node.textContent = String(n);
  }
  document.getElementById("fleet-total").textContent = `${total} phone${total === 1 ? "" : "s"}`;
}

function applyEvent(event) {
  if (event.type === "device.removed") {
    rows.delete(event.device.id);
    tbody.querySelector(`tr[data-device-id="${event.device.id}"]`)?.remove();
    renderEmpty();
  } else if (event.device) {
    const current = rows.get(event.device.id);
    // Ignore an event older than what we show (it may have been overtaken by the snapshot).
    if (current && current.updated_at && event.device.updated_at && event.device.updated_at < current.updated_at) return;
    rows.set(event.device.id, event.device);
    placeRow(event.device, event.type === "device.status");
    renderEmpty();
  }
  setCounts(event.counts);
}

async function loadSnapshot() {
  pending = [];
  const response = await fetch(`${table.dataset.snapshotUrl}${window.location.search}`, {
    headers: { Accept: "application/json" }, credentials: "same-origin",
  });
  if (response.status === 401) { window.location.reload(); return; }
  if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
  const snapshot = await response.json();
  rows.clear();
  tbody.replaceChildren();
  for (const row of snapshot.devices) {
    rows.set(row.id, row);
    if (matches(row)) tbody.append(renderRow(row));
  }
  renderEmpty();
  setCounts(snapshot.counts);
  const held = pending;
  pending = null;
  for (const event of held) applyEvent(event);
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}${table.dataset.wsPath}`);
  socket.addEventListener("open", async () => {
    attempt = 0;
    setIndicator("connected", "live");
    try { await loadSnapshot(); } catch (error) { console.warn(error); pending = null; }
  });
  socket.addEventListener("message", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    if (pending) pending.push(event); else applyEvent(event);
  });
  socket.addEventListener("close", (closed) => {
    if (closed.code === 4401) { window.location.reload(); return; } // session gone: the login page
    attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5);
    setIndicator("reconnecting", `reconnecting in ${Math.round(delay / 1000)} s…`);
    window.setTimeout(connect, delay);
  });
}

// Relative "last seen" times keep moving without events.
window.setInterval(() => {
  for (const node of tbody.querySelectorAll("time[datetime]")) node.textContent = timeAgo(node.dateTime);
}, 5000);

connect();
