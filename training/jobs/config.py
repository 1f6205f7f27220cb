"""A federated job's configuration: one validator shared by the web form, the API and `run_job`.

`parse_job_config(data)` takes untrusted JSON-like input and returns a `JobConfig` or raises
`JobConfigError` whose `.errors` maps each field to a message a person can act on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from training.fl.datasets import dataset_names
from training.fl.nets import model_names
from training.fl.registry import STRATEGY_NAMES, make_strategy, strategy_defaults
from training.fl.robust import AGGREGATOR_NAMES
from training.jobs import simulation_config

PARTITIONS = {
    "iid": "IID (shuffled, equal sizes)",
    "dirichlet": "Dirichlet label skew (α)",
    "shards": "Label-sorted shards per phone (k)",
    "quantity": "Quantity skew (lognormal σ)",
    "natural": "Natural (the data set's own devices)",
}
TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
# Client influence (ALGORITHMS.md §5) models FedAvg-style rounds: uploads are model deltas averaged by
# sample count. SCAFFOLD's and FedLaAvg's uploads are not (control variates, latest gradients).
INFLUENCE_MODES = {
    "auto": "Auto (on for FedAvg/FedProx with a small model)",
    "on": "On",
    "off": "Off",
}
INFLUENCE_ALGORITHMS = ("fedavg", "fedprox")
# Submodel jobs (ALGORITHMS.md §6): these algorithms train the CTR model on the recsys click logs, and
# that data set and model work with nothing else (the CTR model scores id fields, not feature tensors).
SUBMODEL_ALGORITHMS = ("fedsubavg", "fedavg_full")
SUBMODEL_DATASET = "recsys"
SUBMODEL_MODEL = "ctr"
NATURAL_DATASETS = ("synthetic", SUBMODEL_DATASET)
# Built-in data sets without clients of their own; plug-ins and stored files may have them (a file's
# client ids, a LEAF file's users), which preparing the job checks.
NO_NATURAL_CLIENTS = ("digits",)
UPLOADED_DATASET = "uploaded"  # a stored data set (jobs/datasets.py), by dataset_params.dataset_id


class JobConfigError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class JobConfig:
    name: str = "digits-fedavg"
    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    partition: str = "iid"
    partition_param: float | None = None
    model: str = "mlp"
    # The model's own sizes (hidden widths, channels, a plug-in's parameters), checked against its
    # declaration (nets.validate_model_params); what is not given takes the declared default.
    model_params: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "fedavg"
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "mean"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 30
    clients_per_round: int = 10
    min_clients: int = 0  # 0 = derived: ceil(80% of clients_per_round)
    over_selection: float = 1.3
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.1
    round_deadline_s: float = 120.0
    max_phones: int = 0  # 0 = every eligible phone at launch takes part
    min_battery: int = 0
    require_charging: bool = False
    device_tags: tuple[str, ...] = ()
    seed: int = 1
    # Client influence, analysed in the training queue after each committed round (training/analysis/).
    influence: str = "auto"
    influence_budget: int = 0  # max Fisher products per round; 0 = one Fisher sample per local step
    # Automatic exclusion of clients whose cumulative influence on the test loss is negative.
    auto_exclude: bool = False
    exclude_warmup_rounds: int = 5  # no automatic exclusion before this many rounds have committed
    exclude_max_fraction: float = 0.3  # at most this share of the job's phones may be excluded
    exclude_min_remaining: int = 0  # phones that must stay in; 0 = derived: clients per round
    # A declared backdoor test: attack success rate on the test set with this trigger, every round.
    backdoor_test: bool = False
    backdoor_target: int = 0
    backdoor_trigger_size: int = 2
    backdoor_trigger_value: float = 1.0
    # Where the job runs: the lab's phones, or N simulated in-process clients (jobs/simulation_config.py).
    backend: str = "lab"
    sim_clients: int = 0
    sim_availability: str = "always"
    sim_trace: str = ""
    sim_params: dict[str, Any] = field(default_factory=dict)
    # Phone-resident data: each phone trains on files already in <work dir>/<phone_data_dir>/ (train.npz
    # or train.csv, README) and the server pushes no shard; the data set is then only the held-out test
    # set. phone_data_report: phones may report their sample count and label histogram (else every
    # update weighs the same and nothing about a phone's data is told).
    data_on_phone: bool = False
    phone_data_dir: str = "data"
    phone_data_report: bool = False

    @property
    def min_reports(self) -> int:
        if self.min_clients:
            return self.min_clients
        return max(1, math.ceil(0.8 * self.clients_per_round))

    @property
    def selection_count(self) -> int:
        return math.ceil(self.clients_per_round * self.over_selection)

    @property
    def influence_floor(self) -> int:
        """Phones that automatic exclusion must leave in the job."""
        return max(self.exclude_min_remaining or self.clients_per_round, self.min_reports)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["device_tags"] = list(self.device_tags)
        return data


DEFAULTS = JobConfig()
_INT_RANGES: dict[str, tuple[int, int]] = {
    "rounds": (1, 10_000),
    "clients_per_round": (1, 1_000),
    "min_clients": (0, 1_000),
    "local_epochs": (1, 100),
    "batch_size": (1, 10_000),
    "max_phones": (0, 10_000),
    "min_battery": (0, 100),
    "seed": (0, 2**31 - 1),
    "data_seed": (0, 2**31 - 1),
    "influence_budget": (0, 100_000_000),
    "exclude_warmup_rounds": (0, 10_000),
    "exclude_min_remaining": (0, 10_000),
    "backdoor_target": (0, 9_999),
    "backdoor_trigger_size": (1, 64),
}
_FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "over_selection": (1.0, 3.0),
    "lr": (1e-6, 10.0),
    "round_deadline_s": (1.0, 24 * 3600.0),
    "exclude_max_fraction": (0.01, 0.9),
    "backdoor_trigger_value": (-1e6, 1e6),
}
_CHOICES = {
    "dataset": dataset_names,
    "model": model_names,
    "algorithm": lambda: list(STRATEGY_NAMES),
    "aggregator": lambda: list(AGGREGATOR_NAMES),
    "partition": lambda: list(PARTITIONS),
    "influence": lambda: list(INFLUENCE_MODES),
}
_BOOLEANS = frozenset(
    {"require_charging", "auto_exclude", "backdoor_test", "data_on_phone", "phone_data_report"}
)
PHONE_DATA_DIR_RE = re.compile(r"^[A-Za-z0-9_.-]{1,60}(/[A-Za-z0-9_.-]{1,60}){0,4}$")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"0", "false", "no", "off", ""}:
        return False
    if isinstance(value, int):
        return bool(value)
    raise ValueError


def _parse_tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [t for t in re.split(r"[,\s]+", value) if t]
    if not isinstance(value, list | tuple):
        raise ValueError("device_tags must be a list of tags")
    tags = tuple(str(t) for t in value)
    bad = [t for t in tags if not TAG_RE.match(t)]
    if bad:
        raise ValueError(f"tags may use letters, digits, '_', '.', '-' only: {', '.join(bad)}")
    return tags


MAX_PARAM_LIST_ITEMS = 64


def _parse_params(value: Any, *, lists: bool = False) -> dict[str, Any]:
    """A JSON object of scalar parameters; with `lists`, short lists of numbers too (layer widths)."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be an object of parameters")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.match(r"^[a-z_][a-z0-9_]{0,40}$", key):
            raise ValueError(f"bad parameter name {key!r}")
        if isinstance(item, bool | int | float | str) or item is None:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number")
            out[key] = item
        elif lists and isinstance(item, list | tuple) and len(item) <= MAX_PARAM_LIST_ITEMS:
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in item):
                raise ValueError(f"{key} must be a list of numbers")
            out[key] = list(item)
        else:
            raise ValueError(f"{key} must be a number, string or boolean")
    return out


def parse_job_config(data: Mapping[str, Any]) -> JobConfig:
    if not isinstance(data, Mapping):
        raise JobConfigError({"__all__": "the job configuration must be a JSON object"})
    known = {f.name for f in dataclasses.fields(JobConfig)}
    errors: dict[str, str] = {}
    unknown = sorted(set(data) - known)
    if unknown:
        errors["__all__"] = f"unknown field(s): {', '.join(unknown)}"
    values: dict[str, Any] = {}
    for name in known & set(data):
        raw = data[name]
        try:
            if name in simulation_config.FIELDS:
                values[name] = simulation_config.parse_field(name, raw)
            elif name in _INT_RANGES:
                lo, hi = _INT_RANGES[name]
                number = _as_int(raw)
                if not lo <= number <= hi:
                    raise ValueError(f"must be between {lo} and {hi}")
                values[name] = number
            elif name in _FLOAT_RANGES:
                flo, fhi = _FLOAT_RANGES[name]
                real = _as_float(raw)
                if not flo <= real <= fhi:
                    raise ValueError(f"must be between {flo:g} and {fhi:g}")
                values[name] = real
            elif name in _CHOICES:
                options = _CHOICES[name]()
                if raw not in options:
                    raise ValueError(f"unknown {name} {raw!r}; choose one of {', '.join(options)}")
                values[name] = raw
            elif name == "partition_param":
                values[name] = None if raw in (None, "") else _as_float(raw)
            elif name in _BOOLEANS:
                values[name] = _as_bool(raw)
            elif name == "device_tags":
                values[name] = _parse_tags(raw)
            elif name == "model_params":
                values[name] = _parse_params(raw, lists=True)
            elif name.endswith("_params"):
                values[name] = _parse_params(raw)
            elif name == "phone_data_dir":
                text = str(raw).strip().strip("/")
                if not PHONE_DATA_DIR_RE.match(text) or ".." in text.split("/"):
                    raise ValueError(
                        "a folder inside the phone's work dir: letters, digits, '_', '.', '-' and '/'"
                    )
                values[name] = text
            elif name == "name":
                text = str(raw).strip()
                if not 1 <= len(text) <= 120:
                    raise ValueError("give the job a name of 1 to 120 characters")
                values[name] = text
        except ValueError as exc:
            message = str(exc) or f"{raw!r} is not a valid value"
            errors[name] = message
        except TypeError:
            errors[name] = f"{raw!r} is not a valid value"
    if errors:
        raise JobConfigError(errors)
    config = dataclasses.replace(DEFAULTS, **values)
    config = _check_declared_params(config, errors)
    _check_consistency(config, errors)
    if errors:
        raise JobConfigError(errors)
    return config


def _check_declared_params(config: JobConfig, errors: dict[str, str]) -> JobConfig:
    """The model's and the data set's parameters against their declarations (built-in or plug-in): one
    message per field listing every problem. The given keys keep their checked values (so a spec that
    set nothing stays as it was before the sizes were parameters); defaults are not written in."""
    from training.fl.datasets import validate_dataset_params  # noqa: PLC0415 - see _dataset_classes
    from training.fl.nets import validate_model_params  # noqa: PLC0415
    from training.fl.plugins import ParamError  # noqa: PLC0415

    checked: dict[str, Any] = {}
    for name, check, subject, given in (
        ("model_params", validate_model_params, config.model, config.model_params),
        ("dataset_params", validate_dataset_params, config.dataset, config.dataset_params),
    ):
        try:
            values = check(subject, given)
        except ParamError as exc:
            errors[name] = "; ".join(exc.problems)
            continue
        except ValueError as exc:  # a plug-in that is not available
            errors[name] = str(exc)
            continue
        checked[name] = {key: values[key] for key in given}
    return dataclasses.replace(config, **checked)


def strategy_params(config: JobConfig) -> dict[str, Any]:
    """The algorithm's parameters plus the aggregation rule, for strategies that take one."""
    params = dict(config.algorithm_params)
    if "aggregator" in strategy_defaults(config.algorithm):
        params["aggregator"] = config.aggregator
        params["aggregator_params"] = dict(config.aggregator_params)
    return params


def _check_consistency(config: JobConfig, errors: dict[str, str]) -> None:
    try:
        make_strategy(config.algorithm, strategy_params(config), None)
    except ValueError as exc:
        field_name = "aggregator_params" if str(exc).startswith("aggregator") else "algorithm_params"
        errors[field_name] = str(exc)
    if config.aggregator != "mean" and "aggregator" not in strategy_defaults(config.algorithm):
        errors["aggregator"] = f"{config.algorithm} aggregates by its own rule; choose the mean aggregator"
    if config.min_clients > config.clients_per_round:
        errors["min_clients"] = "cannot exceed clients per round"
    if config.partition in {"dirichlet", "shards", "quantity"} and config.partition_param is None:
        hint = {"dirichlet": "α, e.g. 0.5", "shards": "k shards per phone, e.g. 2", "quantity": "σ, e.g. 1.0"}
        errors["partition_param"] = (
            f"the {config.partition} partition needs its parameter ({hint[config.partition]})"
        )
    if config.partition == "dirichlet" and config.partition_param is not None and config.partition_param <= 0:
        errors["partition_param"] = "α must be positive"
    if (
        config.partition == "shards"
        and config.partition_param is not None
        and (config.partition_param < 1 or not float(config.partition_param).is_integer())
    ):
        errors["partition_param"] = "k must be a whole number ≥ 1"
    if config.partition == "natural" and config.dataset in NO_NATURAL_CLIENTS:
        errors["partition"] = (
            f"the natural partition needs a data set with its own devices ({', '.join(NATURAL_DATASETS)}, "
            "a plug-in's or a stored file's with client ids)"
        )
    if config.dataset == UPLOADED_DATASET:
        from training.jobs.datasets import dataset_problem  # noqa: PLC0415 - reads the database

        problem = dataset_problem(config.dataset_params.get("dataset_id"))
        if problem:
            errors["dataset_params"] = problem
    _check_submodel(config, errors)
    _check_influence(config, errors)
    _check_phone_data(config, errors)
    simulation_config.check(config, errors)


def _check_submodel(config: JobConfig, errors: dict[str, str]) -> None:
    """Submodel algorithms, the recsys data set and the CTR model go together; say which field to fix."""
    submodel = config.algorithm in SUBMODEL_ALGORITHMS
    if submodel and config.dataset != SUBMODEL_DATASET:
        errors["dataset"] = f"{config.algorithm} trains CTR submodels: choose the {SUBMODEL_DATASET} data set"
    elif config.dataset == SUBMODEL_DATASET and not submodel:
        errors["algorithm"] = (
            f"the {SUBMODEL_DATASET} click logs train with a submodel algorithm: {', '.join(SUBMODEL_ALGORITHMS)}"
        )
    if (submodel or config.dataset == SUBMODEL_DATASET) and config.model != SUBMODEL_MODEL:
        errors["model"] = f"CTR jobs use the {SUBMODEL_MODEL} model"
    elif config.model == SUBMODEL_MODEL and config.dataset != SUBMODEL_DATASET:
        errors["model"] = f"the {SUBMODEL_MODEL} model needs the {SUBMODEL_DATASET} data set"
    if config.dataset == SUBMODEL_DATASET and config.partition != "natural":
        errors["partition"] = "recsys gives each phone its own user's logs: choose the natural partition"
    if config.dataset == SUBMODEL_DATASET and config.backdoor_test:
        errors["backdoor_test"] = "the backdoor test needs an image or feature data set, not click logs"


def _check_phone_data(config: JobConfig, errors: dict[str, str]) -> None:
    """Phone-resident data goes with lab jobs of feature data sets; the data set is the held-out set."""
    if not config.data_on_phone:
        if config.phone_data_report:
            errors["phone_data_report"] = "only phone-resident jobs (data on the phones) report counts"
        return
    if config.backend != "lab":
        errors["data_on_phone"] = "phone-resident data needs phones: choose the lab backend"
    elif config.algorithm in SUBMODEL_ALGORITHMS or config.dataset == SUBMODEL_DATASET:
        errors["data_on_phone"] = (
            "submodel jobs request rows of the server's data: not with phone-resident data"
        )
    elif config.influence == "on":
        errors["influence"] = (
            "influence estimates need each phone's sample count: not with phone-resident data"
        )
    elif config.auto_exclude:
        errors["auto_exclude"] = "automatic exclusion needs client influence: not with phone-resident data"


def _check_influence(config: JobConfig, errors: dict[str, str]) -> None:
    """The client-influence, exclusion and backdoor-test options against the rest of the job."""
    supported = config.algorithm in INFLUENCE_ALGORITHMS
    if config.influence == "on" and not supported:
        errors["influence"] = (
            f"influence estimation models FedAvg-style rounds ({', '.join(INFLUENCE_ALGORITHMS)}); "
            f"{config.algorithm}'s uploads are not plain model deltas"
        )
    if config.auto_exclude:
        if config.influence == "off" or not supported:
            errors["auto_exclude"] = (
                "automatic exclusion needs client influence (influence auto or on, FedAvg or FedProx)"
            )
        elif config.exclude_warmup_rounds >= config.rounds:
            errors["exclude_warmup_rounds"] = f"the warm-up must end before the last round ({config.rounds})"
    if config.exclude_min_remaining and config.exclude_min_remaining < config.min_reports:
        errors["exclude_min_remaining"] = (
            f"must keep at least the minimum clients per round ({config.min_reports}), or 0 for the default"
        )
    if config.backdoor_test:
        classes = _dataset_classes(config)
        if classes is not None and config.backdoor_target >= classes:
            errors["backdoor_target"] = f"{config.dataset} has classes 0 to {classes - 1}"


def _dataset_classes(config: JobConfig) -> int | None:
    """The data set's class count (None when its parameters are wrong: that error is reported already)."""
    from training.fl.datasets import load_dataset  # noqa: PLC0415 - loads data: only for a backdoor test

    try:
        return load_dataset(config.dataset, seed=config.data_seed, **config.dataset_params).num_classes
    except (TypeError, ValueError):
        return None
