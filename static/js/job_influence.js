// The job dashboard's client-influence section, drawn from snapshot.influence (training/web/influence_section.py).
// The figures themselves are drawn by job_dashboard.js's renderFigures; this module shows or hides their
// boxes (before they are drawn, so Plotly measures a visible container), fills the ranked table with
// exclude/include buttons for operators, and lists the exact leave-one-out runs. Text from phones and users
// is only ever set with textContent.

import { el } from "./dom.js";

const section = document.getElementById("influence-section");

const signed = (value, digits = 4) =>
  value === null || value === undefined ? "–" : `${value >= 0 ? "+" : ""}${Number(value).toFixed(digits)}`;
const plain = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

function csrfToken() {
  const input = section.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

function actionForm(url, label, question) {
  const form = el("form", { method: "post", action: url, className: "inline-form" }, [
    el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrfToken() }),
    el("button", { type: "submit", className: "btn", textContent: label }),
  ]);
  form.addEventListener("submit", (event) => {
    if (!window.confirm(question)) event.preventDefault();
  });
  return form;
}

function statusText(row) {
  if (row.excluded) {
    const who = row.excluded_auto ? "automatically" : "by an operator";
    const said = row.excluded_reason && !row.excluded_reason.startsWith("excluded") ? `: ${row.excluded_reason}` : "";
    return `excluded ${who} after round ${row.excluded_round ?? "–"}${said}`;
  }
  if (!row.tracked) return "no update aggregated yet";
  return row.truncated ? "truncated estimator (a layer's propagated term grew)" : "";
}

function rankingRow(row, canOperate) {
  const harm = row.tracked && (row.loss ?? row.loss_first_order ?? 0) < 0;
  const cells = [
    el("td", { className: "num", textContent: row.rank === null ? "–" : String(row.rank) }),
    el("td", { textContent: row.label }),
    el("td", { className: `num${harm ? " warning-text" : ""}`, textContent: signed(row.loss) }),
    el("td", { className: "num", textContent: signed(row.loss_first_order) }),
    el("td", { className: "num", textContent: signed(row.accuracy, 3) }),
    el("td", { className: "num", textContent: plain(row.params_norm) }),
    el("td", { className: "num", textContent: String(row.rounds_in) }),
    el("td", { className: "num", textContent: signed(row.exact_loss) }),
    el("td", { className: "muted small", textContent: statusText(row) }),
  ];
  if (canOperate) {
    const action = row.excluded
      ? actionForm(row.include_url, "Include", `Include ${row.label} again? It can be selected from the next round on.`)
      : actionForm(row.exclude_url, "Exclude", `Exclude ${row.label}? It is not selected from the next round on.`);
    cells.push(el("td", {}, [action]));
  }
  return el("tr", { dataset: { deviceId: String(row.device) } }, cells);
}

function runText(run) {
  const parts = [`#${run.id} ${run.status}`];
  if (run.status === "running" || run.status === "queued") parts.push(`${Math.round(run.progress * 100)}% · ${run.message}`);
  const agreement = run.result?.agreement?.loss;
  if (agreement) {
    parts.push(`rounds 1–${run.result.round}: Pearson r ${plain(agreement.pearson)} · Spearman ρ ${plain(agreement.spearman)} (n = ${agreement.n})`);
    const name = (id) => run.result.clients?.[id]?.name ?? id ?? "–";
    parts.push(`most harmful: estimate ${name(agreement.lowest_estimated)}, exact ${name(agreement.lowest_exact)}`);
  }
  if (run.status === "completed") {
    parts.push(`replay ${plain(run.result.exact_seconds, 1)} s, estimate ${plain(run.result.estimate_seconds, 2)} s`);
    if (run.result.cost_ratio !== null && run.result.cost_ratio !== undefined) parts.push(`ratio ${plain(run.result.cost_ratio, 3)}`);
  }
  if (run.error) parts.push(run.error);
  return parts.join(" · ");
}

function renderRuns(runs) {
  const list = document.getElementById("analysis-runs");
  list.replaceChildren(...(runs || []).map((run) => el("li", { className: `run-${run.status}`, textContent: runText(run) })));
}

function renderLooControls(influence) {
  const button = document.getElementById("loo-button");
  const refusal = document.getElementById("loo-refusal");
  if (!button || !refusal) return;
  const busy = (influence.runs || []).some((run) => run.status === "queued" || run.status === "running");
  refusal.textContent = influence.loo_refusal || (busy ? "a run is under way" : "");
  button.disabled = Boolean(influence.loo_refusal) || busy;
}

function summaryText(influence) {
  if (!influence.enabled) return `estimate ${influence.reason}`;
  const parts = [`estimate ${influence.reason}`];
  if (influence.last_round) parts.push(`analysed up to round ${influence.last_round}`);
  if (influence.costs?.length) {
    parts.push(`cost ${plain(influence.total_seconds, 2)} s, ${influence.total_fisher_products} Fisher products in all`);
  }
  if (influence.budget) parts.push(`budget ${influence.budget} per round`);
  if (influence.auto_exclude) parts.push("automatic exclusion on");
  return parts.join(" · ");
}

export function renderInfluence(influence, figures) {
  if (!section || !influence) return;
  const canOperate = section.dataset.canOperate === "1";
  document.getElementById("influence-summary").textContent = summaryText(influence);
  document.getElementById("influence-note").textContent = [influence.fisher_note, influence.aggregator_note]
    .filter(Boolean)
    .join(" ");
  section.querySelector("[data-influence-charts]").hidden = !figures?.influence_heatmap;
  section.querySelector("[data-attack-chart]").hidden = !figures?.attack_success;
  section.querySelector("[data-loo-chart]").hidden = !figures?.loo_scatter;
  const rows = (influence.ranking || []).map((row) => rankingRow(row, canOperate));
  document.getElementById("influence-ranking").replaceChildren(...rows);
  renderRuns(influence.runs);
  renderLooControls(influence);
}
