// The new-job form: show only the parameters of the chosen data set / algorithm / aggregator, hint at the
// partition's parameter, and keep the "eligible phones" count current as the eligibility fields change.
// The server validates everything again (parse_job_config); this script only helps.

const form = document.getElementById("job-form");
const field = (name) => form.elements.namedItem(name);

const PARTITION_HINTS = {
  iid: "Not used by IID; leave empty.",
  dirichlet: "α > 0: smaller means more label skew (e.g. 0.5).",
  shards: "k: label-sorted shards per phone, a whole number (e.g. 2).",
  quantity: "σ of the lognormal shard sizes (e.g. 1.0).",
  natural: "Not used: the data set's own devices are the phones' shards.",
};
const ELIGIBILITY_FIELDS = ["device_tags", "min_battery", "require_charging"];
const DEBOUNCE_MS = 300;

function syncParamSets(kind) {
  const choice = field(kind)?.value;
  for (const set of form.querySelectorAll(`[data-param-kind="${kind}"]`)) {
    const active = set.dataset.paramChoice === choice;
    set.hidden = !active;
    // Hidden inputs are not sent, so a stale value of another choice never reaches the server.
    for (const input of set.querySelectorAll("input, select")) input.disabled = !active;
  }
}

function syncPartitionHint() {
  const partition = field("partition").value;
  const row = form.querySelector('[data-field="partition_param"]');
  const help = row?.querySelector(".help");
  if (help) help.textContent = PARTITION_HINTS[partition] || help.textContent;
  const input = field("partition_param");
  const unused = partition === "iid" || partition === "natural";
  input.disabled = unused;
  if (unused) input.value = "";
}

function minReports() {
  const minClients = Number(field("min_clients").value) || 0;
  const perRound = Number(field("clients_per_round").value) || 0;
  return minClients || Math.max(1, Math.ceil(0.8 * perRound));
}

let eligible = null;

function showEligibility() {
  const box = document.getElementById("eligibility");
  const warning = box.querySelector("[data-eligible-warning]");
  if (eligible === null) return;
  box.querySelector("[data-eligible-count]").textContent = String(eligible.eligible);
  box.querySelector("[data-online-count]").textContent = String(eligible.online);
  const needed = minReports();
  const short = eligible.eligible < needed;
  box.classList.toggle("short", short);
  warning.hidden = !short;
  warning.textContent = short
    ? `A round needs at least ${needed} reports, so this job would wait for more phones.`
    : "";
}

let timer = null;
let sequence = 0;

function refreshEligibility() {
  window.clearTimeout(timer);
  timer = window.setTimeout(async () => {
    const query = new URLSearchParams();
    query.set("device_tags", field("device_tags").value);
    query.set("min_battery", field("min_battery").value || "0");
    query.set("require_charging", field("require_charging").checked ? "true" : "false");
    const mine = ++sequence; // only the latest answer counts
    try {
      // getAttribute, not form.dataset: the form has a field named "dataset", which shadows it.
      const response = await fetch(`${form.getAttribute("data-eligible-url")}?${query}`, {
        headers: { Accept: "application/json" }, credentials: "same-origin",
      });
      if (mine !== sequence) return;
      if (response.ok) {
        eligible = await response.json();
        showEligibility();
      }
      // A 400 means an eligibility field is invalid; submitting shows the message on that field.
    } catch (error) {
      console.warn(error);
    }
  }, DEBOUNCE_MS);
}

for (const kind of ["dataset", "algorithm", "aggregator"]) {
  field(kind)?.addEventListener("change", () => syncParamSets(kind));
  syncParamSets(kind);
}
field("partition").addEventListener("change", syncPartitionHint);
syncPartitionHint();
for (const name of ELIGIBILITY_FIELDS) field(name).addEventListener("input", refreshEligibility);
for (const name of ["min_clients", "clients_per_round"]) field(name).addEventListener("input", showEligibility);
refreshEligibility();

// The model's parameter count, asked of the server as the model, its parameters or the data set change.
const sizeBox = document.querySelector("[data-model-size]");
let sizeTimer = null;
let sizeSequence = 0;

function refreshModelSize() {
  window.clearTimeout(sizeTimer);
  sizeTimer = window.setTimeout(async () => {
    const query = new URLSearchParams();
    for (const element of form.elements) {
      if (!element.name || element.disabled || element.type === "submit") continue;
      const wanted = ["model", "dataset", "data_seed"].includes(element.name)
        || element.name.startsWith("model_param__") || element.name.startsWith("dataset_param__");
      if (!wanted) continue;
      if (element.type === "checkbox") { if (element.checked) query.append(element.name, "on"); continue; }
      query.append(element.name, element.value);
    }
    const mine = ++sizeSequence;
    try {
      const response = await fetch(`${form.getAttribute("data-model-size-url")}?${query}`, {
        headers: { Accept: "application/json" }, credentials: "same-origin",
      });
      if (mine !== sizeSequence) return;
      const answer = await response.json();
      sizeBox.textContent = answer.text || "";
      sizeBox.parentElement.classList.toggle("short", answer.parameters === null);
    } catch (error) {
      console.warn(error);
    }
  }, DEBOUNCE_MS);
}

field("model")?.addEventListener("change", () => { syncParamSets("model"); refreshModelSize(); });
syncParamSets("model");
field("dataset")?.addEventListener("change", refreshModelSize);
for (const element of form.querySelectorAll('[name^="model_param__"], [name^="dataset_param__"]')) {
  element.addEventListener("input", refreshModelSize);
  element.addEventListener("change", refreshModelSize);
}
