// The live job dashboard: load snapshot.json over HTTP (job, rounds, current round's phones, log, and the
// Plotly figures built server-side by training/web/charts/), draw it, then apply `ws/jobs/<id>/` events.
// On every (re)connect the snapshot is loaded again, and a committed round refetches it once, so the charts
// gain points without a page reload and nothing is missed while the socket was down. Events that arrive
// while a snapshot is loading are held and applied after it. Text from phones and users is only ever set
// with textContent, never as HTML.

import { renderInfluence } from "./job_influence.js";
import { el } from "./dom.js";

const root = document.getElementById("job-dashboard");
const indicator = document.getElementById("live-indicator");
const grid = document.getElementById("phone-grid");
const logList = document.getElementById("job-log");
const localEpochs = Number(root.dataset.localEpochs) || null;

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;
const LOG_LIMIT = 200;
const PLOT_CONFIG = { responsive: true, displaylogo: false };
const ACTIVE = new Set(["queued", "running", "paused"]);
const STATE_LABELS = {
  selected: "Selected", pushing: "Pushing", training: "Training", pulling: "Pulling", reported: "Reported",
  late: "Late", failed: "Failed", rejected: "Rejected", dropped: "Dropped",
};

let attempt = 0;
let pending = null; // events held while a snapshot loads
let refetchAgain = false; // a round completed while a snapshot was loading
let currentRound = null; // Round.snapshot() of the round the grid shows
const clients = new Map(); // device id -> ClientResult.snapshot() (plus live progress)

function setIndicator(state, text) {
  indicator.classList.remove("connected", "reconnecting");
  if (state) indicator.classList.add(state);
  indicator.querySelector(".label").textContent = text;
}

const number = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const capitalise = (text) => text.charAt(0).toUpperCase() + text.slice(1);

// --- job header -----------------------------------------------------------------------------------------
function renderJob(job) {
  const badge = document.getElementById("job-status");
  badge.className = `badge job-${job.status}`;
  badge.textContent = capitalise(job.status);
  const done = job.committed_rounds;
  const total = Math.max(job.rounds_total, 1);
  const bar = document.getElementById("round-progress");
  bar.querySelector(".fill").style.width = `${Math.min(100, (100 * done) / total)}%`;
  bar.classList.toggle("done", done >= job.rounds_total);
  bar.setAttribute("aria-valuenow", String(done));
  document.getElementById("round-progress-label").textContent = `${done} / ${job.rounds_total} rounds committed`;
  document.getElementById("headline-label").textContent = job.headline.label;
  document.getElementById("last-accuracy").textContent = job.headline.text;
  const error = document.getElementById("job-error");
  error.textContent = job.error || "";
  error.hidden = !job.error;
  for (const form of document.querySelectorAll("form[data-action]")) {
    const action = form.dataset.action;
    form.hidden = !(
      (action === "pause" && (job.status === "queued" || job.status === "running")) ||
      (action === "resume" && job.status === "paused") ||
      (action === "cancel" && ACTIVE.has(job.status))
    );
  }
}

// --- the current round's phones -------------------------------------------------------------------------
function renderRoundHeader() {
  const title = document.getElementById("round-title");
  const badge = document.getElementById("round-status");
  const summary = document.getElementById("round-summary");
  if (!currentRound) {
    title.textContent = "–";
    badge.hidden = true;
    summary.textContent = "";
    return;
  }
  title.textContent = currentRound.attempt > 1 ? `${currentRound.number} (try ${currentRound.attempt})` : String(currentRound.number);
  badge.hidden = false;
  badge.className = `badge round-${currentRound.status}`;
  badge.textContent = capitalise(currentRound.status);
  const all = [...clients.values()];
  const reported = all.filter((c) => c.state === "reported").length;
  const failed = all.filter((c) => ["failed", "rejected", "dropped", "late"].includes(c.state)).length;
  let text = `${all.length} selected · ${reported} of ${currentRound.goal} reported`;
  if (failed) text += ` · ${failed} failed or late`;
  if (currentRound.reason) text += ` · ${currentRound.reason}`;
  summary.textContent = text;
}

function progressText(client) {
  if (client.state === "reported") {
    const parts = [`loss ${number(client.loss)}`];
    if (client.samples) parts.push(`${client.samples} samples`);
    if (client.timings?.train) parts.push(`${number(client.timings.train, 1)} s`);
    return parts.join(" · ");
  }
  if (client.step === null || client.step === undefined) return "";
  let epoch = "";
  if (client.epoch !== null && client.epoch !== undefined) {
    const value = Number.isInteger(client.epoch) ? String(client.epoch) : Number(client.epoch).toFixed(1);
    epoch = `epoch ${value}${localEpochs ? `/${localEpochs}` : ""} · `;
  }
  const steps = client.steps_total ? `step ${client.step}/${client.steps_total}` : `step ${client.step}`;
  return `${epoch}${steps} · loss ${number(client.loss)}`;
}

function progressFraction(client) {
  if (client.state === "reported") return 1;
  if (!client.steps_total || client.step === null || client.step === undefined) return 0;
  return Math.min(1, client.step / client.steps_total);
}

function renderCell(client) {
  const name = client.device_name || `phone ${client.device}`;
  const fill = el("span", { className: "fill" });
  fill.style.width = `${Math.round(progressFraction(client) * 100)}%`;
  const bar = el("span", { className: `progress${client.state === "reported" ? " done" : ""}` }, [fill]);
  const cell = el("div", { className: `phone-cell state-${client.state}`, dataset: { deviceId: String(client.device) } }, [
    el("div", { className: "head" }, [
      el("span", { className: "name", textContent: name, title: name }),
      el("span", { className: `badge state-${client.state}`, textContent: STATE_LABELS[client.state] || client.state, dataset: { testid: "phone-state" } }),
    ]),
    bar,
    el("div", { className: "detail" }, [
      el("span", { className: `runtime runtime-${client.runtime || "exec"}`, textContent: client.runtime || "exec", title: "how this phone runs the agent", dataset: { testid: "phone-runtime" } }),
      ` ${progressText(client)}`,
    ]),
  ]);
  if (client.reason) cell.append(el("div", { className: "reason", textContent: client.reason }));
  return cell;
}

function renderGrid() {
  const cells = [...clients.values()]
    .sort((a, b) => String(a.device_name).localeCompare(String(b.device_name)))
    .map(renderCell);
  grid.replaceChildren(...(cells.length ? cells : [el("p", { className: "muted", textContent: "No round yet." })]));
  renderRoundHeader();
}

function updateClient(client) {
  const existing = clients.get(client.device) || {};
  const merged = { ...existing, ...client };
  clients.set(client.device, merged);
  const cell = grid.querySelector(`.phone-cell[data-device-id="${client.device}"]`);
  if (cell) cell.replaceWith(renderCell(merged));
  else renderGrid();
  renderRoundHeader();
}

// --- charts, log, participants --------------------------------------------------------------------------
function renderFigures(figures) {
  if (!window.Plotly) return;
  for (const [key, figure] of Object.entries(figures || {})) {
    const target = document.getElementById(`chart-${key}`);
    if (target) window.Plotly.react(target, figure.data, figure.layout, PLOT_CONFIG);
  }
}

function logItem(entry) {
  const at = new Date(entry.at);
  return el("li", { className: `level-${entry.level}` }, [
    el("time", { className: "at", dateTime: entry.at, textContent: at.toLocaleTimeString(), title: at.toLocaleString() }),
    el("span", { className: "muted", textContent: entry.round ? `round ${entry.round}` : "" }),
    el("span", { className: "message", textContent: entry.message }),
  ]);
}

const logKey = (entry) => `${entry.at}|${entry.message}`;
const shownLog = new Set(); // an entry both in a snapshot and in an event held during its load shows once

function renderLog(entries) {
  const shown = entries.slice(0, LOG_LIMIT);
  shownLog.clear();
  for (const entry of shown) shownLog.add(logKey(entry));
  logList.replaceChildren(...shown.map(logItem));
}

function prependLog(entry) {
  if (shownLog.has(logKey(entry))) return;
  shownLog.add(logKey(entry));
  logList.prepend(logItem(entry));
  while (logList.children.length > LOG_LIMIT) logList.lastElementChild.remove();
}

function renderParticipants(participants) {
  document.getElementById("participant-count").textContent = String(participants.length);
  document.getElementById("participants").replaceChildren(...participants.map((p) => el("tr", {}, [
    el("td", { textContent: p.device_name }),
    el("td", { className: "num", textContent: String(p.client_index) }),
    el("td", { className: "num", textContent: p.samples_known === false ? "–" : String(p.num_samples) }),
    el("td", { className: "small", textContent: p.data_source || "" }),
    el("td", { className: "num", textContent: String(p.rounds_reported) }),
    el("td", { className: "num", textContent: p.last_round === null ? "–" : String(p.last_round) }),
    el("td", { className: "muted", textContent: p.excluded ? `excluded: ${p.excluded_reason}` : "" }),
  ])));
}

// One line above the availability charts: the bias in numbers (the figures are drawn by renderFigures).
function renderAvailabilitySummary(summary) {
  const target = document.getElementById("availability-summary");
  if (!target) return;
  if (!summary || summary.mean_tv === null || summary.mean_tv === undefined) {
    target.textContent = "";
    return;
  }
  const basis = summary.basis === "latest" ? "latest update of every phone" : "this round's reporters";
  let text = `bias (TV, ${basis}): mean ${number(summary.mean_tv)} · last ${number(summary.last_tv)} · cumulative ${number(summary.final_cumulative_tv)}`;
  if (summary.hidden_rounds) text += ` · heatmap shows the latest rounds only`;
  target.textContent = text;
}

// Submodel jobs: the measured cost next to the privacy preset (the figures are drawn by renderFigures).
const kilobytes = (bytes) => (bytes === null || bytes === undefined ? "–" : `${(bytes / 1000).toFixed(1)} kB`);
function renderSubmodelSummary(summary) {
  const target = document.getElementById("submodel-summary");
  if (!target || !summary) return;
  target.textContent = `measured per phone per round: ${kilobytes(summary.bytes_down_per_phone_round)} down ` +
    `(submodel alone ${kilobytes(summary.submodel_bytes_down_per_phone_round)}), ` +
    `${kilobytes(summary.bytes_up_per_phone_round)} up · full model ${kilobytes(summary.full_model_bytes)} each way ` +
    `(downloads ${number(summary.download_reduction, 0)}× smaller) · last AUC ${number(summary.last_auc, 4)}`;
}

function renderModelLink(url) {
  const link = document.getElementById("model-download");
  link.hidden = !url;
  if (url) link.href = url;
  document.getElementById("model-pending").hidden = Boolean(url);
}

// --- events ---------------------------------------------------------------------------------------------
function applyEvent(event) {
  switch (event.type) {
    case "device.progress": {
      if (!currentRound || event.round !== currentRound.number) return;
      const known = clients.get(event.device);
      // Progress means training, unless the phone already finished (a late progress line after the result).
      const finished = known && !["selected", "pushing", "training"].includes(known.state);
      const update = { device: event.device, state: finished ? known.state : event.state || "training" };
      // The first event of a run carries only the state; keep the numbers we have until new ones come.
      for (const key of ["epoch", "step", "steps_total", "loss"]) {
        if (event[key] !== undefined) update[key] = event[key];
      }
      updateClient(update);
      break;
    }
    case "device.finished":
    case "device.failed":
      if (currentRound && event.client.round === currentRound.number) updateClient(event.client);
      break;
    case "round.started":
      currentRound = event.round;
      clients.clear();
      for (const client of event.clients || []) clients.set(client.device, client);
      renderGrid();
      break;
    case "round.completed":
    case "round.abandoned":
      if (currentRound && event.round.id === currentRound.id) {
        currentRound = event.round;
        renderRoundHeader();
      }
      if (event.job) renderJob(event.job);
      refreshSnapshot(); // one request per round: the charts gain the new point
      break;
    case "job.status":
      renderJob(event.job);
      if (!ACTIVE.has(event.job.status)) refreshSnapshot(); // final model link, last round's state
      break;
    case "job.log":
      prependLog(event.entry);
      break;
    case "job.exclusion":
    case "analysis.updated":
      refreshSnapshot(); // influence rows, exclusion markers, an exact leave-one-out run's progress
      break;
    default:
      break;
  }
}

async function loadSnapshot() {
  pending = pending || [];
  const response = await fetch(root.dataset.snapshotUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (response.status === 401) { window.location.reload(); return; }
  if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
  const snapshot = await response.json();
  renderJob(snapshot.job);
  currentRound = snapshot.current_round || snapshot.rounds[snapshot.rounds.length - 1] || null;
  clients.clear();
  for (const client of snapshot.clients) clients.set(client.device, client);
  renderGrid();
  renderInfluence(snapshot.influence, snapshot.figures); // before renderFigures: it unhides chart boxes
  renderFigures(snapshot.figures);
  renderLog(snapshot.log);
  renderParticipants(snapshot.participants);
  renderAvailabilitySummary(snapshot.availability);
  renderSubmodelSummary(snapshot.submodel);
  renderModelLink(snapshot.final_model_url);
  const held = pending;
  pending = null;
  for (const event of held) applyEvent(event);
}

async function refreshSnapshot() {
  if (pending) { refetchAgain = true; return; } // a load is in flight; reload once more after it
  do {
    refetchAgain = false;
    try { await loadSnapshot(); } catch (error) { console.warn(error); pending = null; }
  } while (refetchAgain);
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}${root.dataset.wsPath}`);
  socket.addEventListener("open", () => {
    attempt = 0;
    setIndicator("connected", "live");
    refreshSnapshot();
  });
  socket.addEventListener("message", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    if (pending) pending.push(event); else applyEvent(event);
  });
  socket.addEventListener("close", (closed) => {
    if (closed.code === 4401) { window.location.reload(); return; } // session gone: the login page
    if (closed.code === 4404) { setIndicator(null, "job not found"); return; }
    attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5);
    setIndicator("reconnecting", `reconnecting in ${Math.round(delay / 1000)} s…`);
    window.setTimeout(connect, delay);
  });
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// Draw at once (even if websockets are blocked), then again whenever the socket (re)connects.
refreshSnapshot();
connect();
