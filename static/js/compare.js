// The compare page: draw the overlaid accuracy curves (figure built by training/web/charts/job.py), and as the
// target accuracy changes, move the target line and recount "rounds to target" from the curves themselves
// (the same rule as charts.rounds_to_target: the first committed round at or above the target).

const form = document.getElementById("compare-form");
const chart = document.getElementById("compare-chart");
const source = document.getElementById("compare-figure");
const targetInput = document.getElementById("c-target");
const idsInput = document.getElementById("c-ids");
const PLOT_CONFIG = { responsive: true, displaylogo: false };

const figure = source ? JSON.parse(source.textContent) : null;

function roundsToTarget(trace, target) {
  for (let i = 0; i < trace.x.length; i += 1) {
    if (trace.y[i] !== null && trace.y[i] >= target) return trace.x[i];
  }
  return null;
}

function applyTarget() {
  const target = Number(targetInput.value);
  if (!figure || !(target > 0 && target <= 1)) return;
  const rows = document.querySelectorAll("#compare-table tbody tr");
  figure.data.forEach((trace, index) => {
    const cell = rows[index]?.querySelector("[data-rounds-to-target]");
    if (cell) cell.textContent = String(roundsToTarget(trace, target) ?? "not reached");
  });
  const label = document.querySelector("[data-target-label]");
  if (label) label.textContent = chart?.dataset.metric === "AUC" ? `AUC ${target.toFixed(2)}` : `${Math.round(target * 100)}%`;
  for (const shape of figure.layout.shapes || []) { shape.y0 = target; shape.y1 = target; }
  if (window.Plotly && chart) window.Plotly.react(chart, figure.data, figure.layout, PLOT_CONFIG);
  const url = new URL(window.location.href);
  url.searchParams.set("target", String(target));
  window.history.replaceState(null, "", url);
}

// Ticking a recent job edits the ids field; the comparison updates on submit.
for (const box of form.querySelectorAll("[data-pick-job]")) {
  box.addEventListener("change", () => {
    const ids = idsInput.value.split(",").map((s) => s.trim()).filter(Boolean).filter((id) => id !== box.value);
    if (box.checked) ids.push(box.value);
    idsInput.value = ids.join(",");
  });
}

if (figure && chart && window.Plotly) window.Plotly.newPlot(chart, figure.data, figure.layout, PLOT_CONFIG);
targetInput.addEventListener("input", applyTarget);
