"""The "new job" form: every JobConfig field, grouped, with defaults from job_config.DEFAULTS.

The form does not re-implement the rules. Its fields only turn text into Python values; the whole config is
then validated by `parse_job_config` (the validator `run_job` and the API use too), and each error it
reports is placed on the field it names, so the person sees the message next to the input to fix.

Per-choice parameters (a data set's, an algorithm's, an aggregator's) are ordinary fields named
`<kind>_param__<choice>__<param>`; job_form.js shows only the set that belongs to the current choice, and
`clean()` collects only that set.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django import forms

from training.fl.datasets import DATASET_LOADERS, dataset_declaration, dataset_names
from training.fl.fedsubavg import ROW_WEIGHTS
from training.fl.index_privacy import PRESETS, per_round_epsilon
from training.fl.nets import model_declaration, model_names, validate_model_params
from training.fl.plugins import Param, ParamError
from training.fl.registry import STRATEGIES
from training.fl.robust import AGGREGATORS
from training.jobs import simulation_config
from training.jobs.config import (
    DEFAULTS,
    INFLUENCE_MODES,
    PARTITIONS,
    JobConfig,
    JobConfigError,
    parse_job_config,
)

PARAM_KINDS = ("dataset", "algorithm", "aggregator")
# Parameters that are set elsewhere in the form (the seed, the aggregator) or are not plain values.
_HIDDEN_PARAMS = frozenset({"seed", "aggregator", "aggregator_params"})
PARAM_LABELS = {
    "mu": "μ (proximal term weight)",
    "server_lr": "Server learning rate",
    "alpha": "α",
    "beta": "β",
    "iid": "IID variant",
    "num_devices": "Number of devices",
    "test_fraction": "Test fraction",
    "max_norm": "Max update norm",
    "num_byzantine": "Assumed attackers f",
    "num_selected": "Updates averaged m",
    # FedSubAvg (submodel jobs)
    "privacy": "Index privacy preset",
    "row_weight": "Row weighting",
    "num_items": "Items (embedding rows)",
    "num_clients": "Users' logs (one per phone: use as many phones)",
}


def _epsilon_text(value: float) -> str:
    if value == float("inf"):
        return "ε ∞: requests show exactly the phone's items"
    if value == 0:
        return "ε 0: every phone downloads the whole union"
    return f"ε {value:.2f} per round, decoy rows cost bytes"


ROW_WEIGHT_TEXT = {
    "touched": "divide each row by the phones that trained it",
    "count": "weight each row by the phones' samples on it",
}
# String parameters with a fixed set of values get a select, each option saying what it means.
PARAM_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "privacy": [
        (name, f"{name} — {_epsilon_text(per_round_epsilon(preset))}") for name, preset in PRESETS.items()
    ],
    "row_weight": [(name, f"{name} — {ROW_WEIGHT_TEXT[name]}") for name in ROW_WEIGHTS],
}

DATASET_LABELS = {
    "digits": "Digits (8×8, scikit-learn)",
    "synthetic": "Synthetic(α, β) (FedProx)",
    "recsys": "Recsys click logs (CTR, for submodel jobs)",
    "uploaded": "A stored data set (uploaded or imported)",
}
MODEL_LABELS = {
    "logreg": "Logistic regression",
    "mlp": "MLP",
    "cnn": "Small CNN",
    "ctr": "CTR (embeddings + MLP)",
}
# Where an error on a JobConfig field that has no input of its own is shown.
ERROR_FIELD_FOR = {
    "dataset_params": "dataset",
    "algorithm_params": "algorithm",
    "aggregator_params": "aggregator",
}

FIELD_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Job and data",
        (
            "name",
            "dataset",
            "data_seed",
            "partition",
            "partition_param",
            "data_on_phone",
            "phone_data_dir",
            "phone_data_report",
        ),
    ),
    ("Model and algorithm", ("model", "algorithm", "aggregator")),
    ("Rounds", ("rounds", "clients_per_round", "min_clients", "over_selection", "round_deadline_s")),
    ("Local training", ("local_epochs", "batch_size", "lr", "seed")),
    ("Phones", ("max_phones", "min_battery", "require_charging", "device_tags")),
    ("Where it runs", ("backend", "sim_clients", "sim_availability", "sim_trace", "sim_params")),
    (
        "Client influence and attacks",
        (
            "influence",
            "influence_budget",
            "auto_exclude",
            "exclude_warmup_rounds",
            "exclude_max_fraction",
            "exclude_min_remaining",
            "backdoor_test",
            "backdoor_target",
            "backdoor_trigger_size",
            "backdoor_trigger_value",
        ),
    ),
)


def _dataset_label(name: str) -> str:
    try:
        return dataset_declaration(name).label or name
    except ValueError:
        return name


def dataset_param_defaults(name: str) -> dict[str, Any]:
    """A data set's keyword parameters and defaults, read from its loader's signature."""
    loader = DATASET_LOADERS[name]
    return {
        p.name: p.default
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def param_choices(kind: str) -> dict[str, dict[str, Any]]:
    """choice -> {param: default} for one kind, keeping only plain values a form field can hold."""
    if kind == "dataset":
        raw = {name: dataset_param_defaults(name) for name in dataset_names()}
    elif kind == "algorithm":
        raw = {name: dict(spec.params) for name, spec in STRATEGIES.items()}
    elif kind == "aggregator":
        raw = {name: dict(spec.params) for name, spec in AGGREGATORS.items()}
    else:
        raise ValueError(f"unknown parameter kind {kind!r}")
    return {
        choice: {
            key: value
            for key, value in params.items()
            if key not in _HIDDEN_PARAMS and isinstance(value, bool | int | float | str)
        }
        for choice, params in raw.items()
    }


def param_field_name(kind: str, choice: str, param: str) -> str:
    return f"{kind}_param__{choice}__{param}"


def _param_field(param: str, default: Any) -> forms.Field:
    # Not required: only the current choice's set is shown, and an empty input means "the default".
    label = PARAM_LABELS.get(param, param.replace("_", " ").capitalize())
    options: dict[str, Any] = {"label": label, "initial": default, "required": False}
    if isinstance(default, bool):
        return forms.BooleanField(**options)
    help_text = f"default {default}"
    if param in PARAM_OPTIONS:
        return forms.ChoiceField(choices=PARAM_OPTIONS[param], **options)
    if isinstance(default, int):
        return forms.IntegerField(help_text=help_text, **options)
    if isinstance(default, float):
        return forms.FloatField(help_text=help_text, **options)
    return forms.CharField(max_length=100, help_text=help_text, **options)


def _choices(
    names: list[str] | tuple[str, ...], labels: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    return [(n, (labels or {}).get(n, n)) for n in names]


# --- model parameters, from each model's declaration (built-in or plug-in) --------------------------------
def model_param_field_name(model: str, param: str) -> str:
    return f"model_param__{model}__{param}"


def param_text(value: Any) -> str:
    """A parameter's value as the form shows it: lists as "200,200"."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def declared_param_field(param: Param) -> forms.Field:
    """A text input (or a select) for one declared parameter; its text is parsed by the declaration
    (Param.parse, from_text=True), so a list type is typed as "200,200"."""
    label = PARAM_LABELS.get(param.name, param.name.replace("_", " ").capitalize())
    bounds = []
    if param.min is not None:
        bounds.append(f"≥ {param.min:g}")
    if param.max is not None:
        bounds.append(f"≤ {param.max:g}")
    kind = {"ints": "whole numbers, comma-separated", "int": "whole number", "float": "number"}.get(
        param.type, param.type
    )
    each = " each" if param.type == "ints" and bounds else ""
    parts = [param.help, f"{kind}{' ' + ', '.join(bounds) + each if bounds else ''}"]
    parts.append(f"default {param_text(param.default)}")
    options: dict[str, Any] = {"label": label, "required": False, "initial": param_text(param.default)}
    help_text = "; ".join(p for p in parts if p)
    if param.choices:
        return forms.ChoiceField(choices=[(c, c) for c in param.choices], help_text=help_text, **options)
    if param.type == "bool":
        return forms.ChoiceField(choices=[("true", "yes"), ("false", "no")], help_text=help_text, **options)
    return forms.CharField(max_length=200, help_text=help_text, **options)


@dataclass(frozen=True)
class ParamSet:
    """The parameter fields of one choice (e.g. FedProx's), shown while that choice is selected."""

    kind: str
    choice: str
    fields: list[forms.BoundField]


class JobForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="Shown in lists and on the compare page.")

    dataset = forms.ChoiceField(
        choices=_choices(dataset_names(), DATASET_LABELS), help_text="What the phones learn from."
    )
    data_seed = forms.IntegerField(help_text="Seeds data generation and the split between phones.")
    partition = forms.ChoiceField(
        choices=list(PARTITIONS.items()), help_text="How the training data is split between the phones."
    )
    partition_param = forms.FloatField(
        required=False,
        label="Partition parameter",
        help_text="Dirichlet: α (smaller = more skew, e.g. 0.5); shards: k per phone (e.g. 2); "
        "quantity: σ (e.g. 1.0); leave empty for IID and natural.",
    )

    model = forms.ChoiceField(
        choices=_choices(model_names(), MODEL_LABELS), help_text="The network every phone trains."
    )
    algorithm = forms.ChoiceField(
        choices=[(n, s.label) for n, s in STRATEGIES.items()],
        help_text="The federated optimisation strategy.",
    )
    aggregator = forms.ChoiceField(
        choices=[(n, s.label) for n, s in AGGREGATORS.items()],
        help_text="How updates are combined; robust choices resist misbehaving phones.",
    )

    rounds = forms.IntegerField(help_text="Committed rounds to run.")
    clients_per_round = forms.IntegerField(
        label="Clients per round", help_text="Reports the server waits for in each round (the goal)."
    )
    min_clients = forms.IntegerField(
        label="Minimum clients",
        help_text="A round commits with at least this many reports; 0 = 80% of clients per round.",
    )
    over_selection = forms.FloatField(
        label="Over-selection", help_text="Phones picked per round ÷ clients per round (1.3 = 30% spare)."
    )
    round_deadline_s = forms.FloatField(
        label="Round deadline (s)", help_text="Phones that have not reported by then are recorded as late."
    )

    local_epochs = forms.IntegerField(label="Local epochs", help_text="Passes over its shard per round.")
    batch_size = forms.IntegerField(label="Batch size")
    lr = forms.FloatField(label="Learning rate", help_text="The phones' local SGD step size η.")
    seed = forms.IntegerField(help_text="Seeds the initial model and the selection of phones.")

    max_phones = forms.IntegerField(
        label="Max phones", help_text="Phones enrolled in the job at launch; 0 = every eligible phone."
    )
    min_battery = forms.IntegerField(
        label="Minimum battery (%)", help_text="Phones below this level take part only while charging."
    )
    require_charging = forms.BooleanField(required=False, label="Only phones that are charging")
    device_tags = forms.CharField(
        required=False,
        label="Device tags",
        help_text="Comma-separated; a phone must carry every tag (letters, digits, '_', '.', '-').",
    )

    influence = forms.ChoiceField(
        choices=list(INFLUENCE_MODES.items()),
        label="Client influence",
        help_text="Fed-Influence after every round: which phones help or hurt the model. Auto = on for "
        "FedAvg/FedProx with a small model (≤ 20,000 parameters, e.g. logistic regression).",
    )
    influence_budget = forms.IntegerField(
        label="Influence budget (Fisher products per round)",
        help_text="Caps the estimate's cost per round; 0 = one Fisher sample per local step.",
    )
    auto_exclude = forms.BooleanField(
        required=False,
        label="Exclude harmful phones automatically",
        help_text="After the warm-up, phones whose cumulative influence on the test loss is negative "
        "are no longer selected (each exclusion is logged and marked on the accuracy chart).",
    )
    exclude_warmup_rounds = forms.IntegerField(label="Warm-up rounds", help_text="No exclusion before this.")
    exclude_max_fraction = forms.FloatField(
        label="Max share excluded", help_text="At most this fraction of the job's phones (0.3 = 30%)."
    )
    exclude_min_remaining = forms.IntegerField(
        label="Phones that must remain", help_text="0 = clients per round."
    )
    backdoor_test = forms.BooleanField(
        required=False,
        label="Declare a backdoor test",
        help_text="Plot the attack success rate per round: test samples stamped with the trigger that "
        "the model labels as the target class.",
    )
    backdoor_target = forms.IntegerField(label="Backdoor target class")
    backdoor_trigger_size = forms.IntegerField(
        label="Trigger size (pixels)", help_text="A square in the bottom-right corner."
    )
    backdoor_trigger_value = forms.FloatField(
        label="Trigger value", help_text="Pixel value of the trigger (digits are scaled to 0–1)."
    )

    data_on_phone = forms.BooleanField(
        required=False,
        label="Data stays on the phones",
        help_text="Each phone trains on its own files (train.npz or train.csv in the folder below, in its "
        "work dir); no shard is sent, and the data set above is only the held-out test set.",
    )
    phone_data_dir = forms.CharField(
        max_length=200, label="Folder on the phone", help_text="Inside the phone's work dir, e.g. data."
    )
    phone_data_report = forms.BooleanField(
        required=False,
        label="Phones may report sample counts and label histograms",
        help_text="Otherwise every update weighs the same and nothing about a phone's data is told.",
    )

    # The backend (jobs/simulation_config.py): the lab's phones, or N simulated clients in the same engine.
    backend = forms.ChoiceField(
        choices=list(simulation_config.BACKENDS.items()),
        help_text="Simulation runs the same job on simulated clients (in batches on the training workers).",
    )
    sim_clients = forms.IntegerField(
        required=False, label="Simulated clients", help_text="Simulation only: 1 to 10,000 clients."
    )
    sim_availability = forms.ChoiceField(
        choices=list(simulation_config.AVAILABILITY_KINDS.items()),
        label="Client availability",
        help_text="The virtual lab's models and seeds (sim_params lab_seed = the lab's --seed).",
    )
    sim_trace = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Availability trace",
        help_text="For the trace model: '<seconds> on|off' lines, as a virtual lab trace file.",
    )
    sim_params = forms.JSONField(
        required=False,
        label="Simulation parameters",
        help_text='JSON, e.g. {"period_rounds": 50, "groups": 2, "speed_min": 1, "speed_max": 3, '
        '"dropout_p": 0.05} (README: simulation parameters).',
    )

    def __init__(self, *args: Any, initial_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = {**DEFAULTS.to_dict(), **(initial_config or {})}
        self._add_model_params(config)
        self.config: JobConfig | None = None
        self._param_specs: dict[str, dict[str, dict[str, Any]]] = {}
        for kind in PARAM_KINDS:
            specs = param_choices(kind)
            self._param_specs[kind] = specs
            chosen = config.get(f"{kind}_params") or {}
            for choice, params in specs.items():
                for param, default in params.items():
                    field = _param_field(param, default)
                    if choice == config.get(kind) and param in chosen:
                        field.initial = chosen[param]
                    self.fields[param_field_name(kind, choice, param)] = field
        self._label_plugins()
        for name in self.base_fields:
            value = config.get(name)
            if name == "device_tags":
                value = ", ".join(value or ())
            self.fields[name].initial = value

    def _add_model_params(self, config: Mapping[str, Any]) -> None:
        """One field per declared parameter of every model; the chosen model's set is shown."""
        self._model_params: dict[str, tuple[Param, ...]] = {}
        chosen = config.get("model_params") or {}
        for name in model_names():
            params = model_declaration(name).params
            self._model_params[name] = params
            for param in params:
                field = declared_param_field(param)
                if name == config.get("model") and param.name in chosen:
                    field.initial = param_text(chosen[param.name])
                self.fields[model_param_field_name(name, param.name)] = field

    def _label_plugins(self) -> None:
        """Plug-ins' models and data sets by their declared labels; stored data sets as a select."""
        model_field = self.fields["model"]
        dataset_field = self.fields["dataset"]
        assert isinstance(model_field, forms.ChoiceField) and isinstance(dataset_field, forms.ChoiceField)
        model_field.choices = [
            (n, MODEL_LABELS.get(n) or model_declaration(n).label or n) for n in model_names()
        ]
        dataset_field.choices = [(n, DATASET_LABELS.get(n) or _dataset_label(n)) for n in dataset_names()]
        stored = param_field_name("dataset", "uploaded", "dataset_id")
        if stored in self.fields:
            from training.models import DataSet  # noqa: PLC0415 - the web layer reads the record

            current = self.fields[stored]
            self.fields[stored] = forms.TypedChoiceField(
                label="Stored data set",
                coerce=int,
                required=False,
                initial=current.initial,
                # A callable: read when the select is drawn or a choice is checked, not per form built.
                choices=lambda: [
                    (d.pk, f"#{d.pk} {d.name} ({d.format})") for d in DataSet.objects.all()[:500]
                ],
                help_text="Uploaded on the data sets page; for a phone-resident job, the held-out test set.",
            )

    def initial_params(self, kind: str, choice: str) -> dict[str, Any]:
        """The parameters the unbound form starts with for `choice` (what the page's size line shows)."""
        if kind == "model":
            texts = {
                p.name: self.fields[model_param_field_name(choice, p.name)].initial
                for p in self._model_params.get(choice, ())
            }
            try:
                return validate_model_params(choice, texts, from_text=True)
            except ValueError:
                return {}
        specs = self._param_specs[kind].get(choice, {})
        values = {p: self.fields[param_field_name(kind, choice, p)].initial for p in specs}
        return {p: v for p, v in values.items() if v not in (None, "")}

    def model_param_sets(self) -> list[ParamSet]:
        return [
            ParamSet("model", name, [self[model_param_field_name(name, p.name)] for p in params])
            for name, params in self._model_params.items()
            if params
        ]

    def _chosen_model_params(self) -> dict[str, Any]:
        """The chosen model's parameters parsed by its declaration; only those given (non-empty) are kept,
        so a job that sets none keeps the model it always had. A problem goes on the model field."""
        model = self.cleaned_data.get("model") or ""
        texts = {}
        for param in self._model_params.get(model, ()):
            text = self.cleaned_data.get(model_param_field_name(model, param.name))
            if text not in (None, ""):
                texts[param.name] = text
        try:
            values = validate_model_params(model, texts, from_text=True)
        except ParamError as exc:
            self.add_error("model", "; ".join(exc.problems))
            return {}
        except ValueError:  # the model itself is unknown: its own field says so
            return {}
        return {name: values[name] for name in texts}

    # --- layout helpers for the template -------------------------------------------------------------
    def groups(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(title, [self[name] for name in names]) for title, names in FIELD_GROUPS]

    def param_sets(self, kind: str) -> list[ParamSet]:
        return [
            ParamSet(kind, choice, [self[param_field_name(kind, choice, p)] for p in params])
            for choice, params in self._param_specs[kind].items()
            if params
        ]

    def dataset_param_sets(self) -> list[ParamSet]:
        return self.param_sets("dataset")

    def algorithm_param_sets(self) -> list[ParamSet]:
        return self.param_sets("algorithm")

    def aggregator_param_sets(self) -> list[ParamSet]:
        return self.param_sets("aggregator")

    # --- validation -------------------------------------------------------------------------------
    def _chosen_params(self, kind: str, choice: str | None) -> dict[str, Any]:
        params = self._param_specs[kind].get(choice or "", {})
        values = {}
        for param in params:
            value = self.cleaned_data.get(param_field_name(kind, choice or "", param))
            if value is not None and value != "":  # an empty input (or none posted) means the default
                values[param] = value
        return values

    def config_data(self) -> dict[str, Any]:
        """The cleaned values as the JSON-like mapping parse_job_config takes."""
        data = {name: self.cleaned_data[name] for name in self.base_fields if name in self.cleaned_data}
        for kind in PARAM_KINDS:
            data[f"{kind}_params"] = self._chosen_params(kind, self.cleaned_data.get(kind))
        data["model_params"] = self._chosen_model_params()
        return data

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        data = self.config_data()
        failed = set(self.errors)
        # parse_job_config reports per-field errors before it checks consistency (partition needs its
        # parameter, ...); a second pass without the failed fields shows both kinds in one submit.
        for _ in range(2):
            try:
                config = parse_job_config({k: v for k, v in data.items() if k not in failed})
            except JobConfigError as exc:
                new_failures = self._place_errors(exc.errors, failed)
                if not new_failures:
                    break
                failed |= new_failures
            else:
                if not self.errors:
                    self.config = config
                break
        return cleaned

    def _place_errors(self, errors: Mapping[str, str], failed: set[str]) -> set[str]:
        """Put each message on its field (or the form); return the config keys that newly failed."""
        placed = set()
        for key, message in errors.items():
            target = ERROR_FIELD_FOR.get(key, key)
            if key in failed or target in failed:
                continue  # that input already shows why it is wrong
            self.add_error(target if target in self.fields else None, message)
            placed.add(key)
        return placed
