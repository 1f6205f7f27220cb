"""A job's backend and, for `simulation`, its simulated clients: how many, when they are online, how fast
they are and which of them misbehave. Validated here so the web form, the API and `run_job` give the same
clear errors (training/jobs/config.py calls `parse_field` and `check`).

    backend           "lab" (the phones, as always) or "simulation" (N in-process clients, same engine)
    sim_clients       N, 1 ≤ N ≤ MAX_SIM_CLIENTS
    sim_availability  always | markov | diurnal | alternating | trace — the virtual lab's models, with its
                      seeds (phone i of a lab started with --seed S draws from S·1000003 + i), so a
                      simulated client i and virtual phone i are online at the same instants
    sim_trace         a trace file's text in the virtual lab's format ("<seconds> on|off" per line, '#'
                      comments), replayed by every client (`trace_offset_s` shifts client i by i·offset)
    sim_params        the numbers below (SIM_PARAM_DEFAULTS says each one's meaning and default)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from devices.virtual.availability import parse_trace

BACKENDS = {"lab": "Lab (the phones)", "simulation": "Simulation (in-process clients)"}
MAX_SIM_CLIENTS = 10_000
AVAILABILITY_KINDS = {
    "always": "Always online",
    "markov": "Markov on/off",
    "diurnal": "Diurnal (day-shaped probability)",
    "alternating": "Alternating groups (FedLaAvg)",
    "trace": "Trace file (replayed)",
}
MAX_TRACE_CHARS = 1_000_000
FIELDS = frozenset({"backend", "sim_clients", "sim_availability", "sim_trace"})

# name -> (default, lowest, highest, meaning). Seconds are simulated seconds, never waited for.
SIM_PARAM_DEFAULTS: dict[str, tuple[float, float, float, str]] = {
    "round_interval_s": (60.0, 1e-3, 1e7, "simulated clock: round r starts at (r − 1) × this"),
    "period_s": (0.0, 0.0, 1e9, "alternating: one group's turn; diurnal: a day (0 = lab default)"),
    "period_rounds": (0.0, 0.0, 1e6, "alternating/diurnal: the period in rounds (× round_interval_s)"),
    "groups": (2, 1, 1000, "alternating groups / diurnal time zones (contiguous blocks of clients)"),
    "mean_on_s": (600.0, 1e-3, 1e9, "markov: mean online time"),
    "mean_off_s": (120.0, 1e-3, 1e9, "markov: mean offline time"),
    "min_online_p": (0.1, 0.0, 1.0, "diurnal: lowest online probability"),
    "max_online_p": (0.9, 0.0, 1.0, "diurnal: highest online probability"),
    "slot_s": (0.0, 0.0, 1e9, "diurnal: one on/off draw (0 = a 96th of the day, ≥ 1 s)"),
    "peak_at": (0.875, 0.0, 1.0, "diurnal: where in the day group 0 peaks"),
    "loop_s": (0.0, 0.0, 1e9, "trace: repeat the trace every this many seconds (0 = no loop)"),
    "trace_offset_s": (0.0, 0.0, 1e9, "trace: client i replays the trace shifted by i × this"),
    "lab_seed": (0, 0, 2**31 - 1, "the virtual lab's --seed whose phones' draws the clients share"),
    "speed_min": (1.0, 0.01, 100.0, "compute speed factor range (the lab's speed_factor: 2 = twice as slow)"),
    "speed_max": (1.0, 0.01, 100.0, "upper end of the speed factor range"),
    "step_s": (0.01, 0.0, 3600.0, "simulated seconds per local SGD step at speed factor 1"),
    "link_mbps_min": (20.0, 0.001, 1e5, "link speed range in Mbit/s each way (the lab's bandwidth)"),
    "link_mbps_max": (20.0, 0.001, 1e5, "upper end of the link speed range"),
    "dropout_p": (0.0, 0.0, 1.0, "per selected client and round: drops out before reporting"),
    "misbehave": (0, 0, MAX_SIM_CLIENTS, "how many clients misbehave (chosen as the lab chooses phones)"),
    "batch_clients": (100, 1, MAX_SIM_CLIENTS, "clients trained per train_batch task"),
    "group_by_label": (
        0,
        0,
        1,
        "alternating: 1 = a client's group follows its main class (FedLaAvg's setup)",
    ),
}
INTEGER_PARAMS = frozenset({"groups", "lab_seed", "misbehave", "batch_clients", "group_by_label"})
TEXT_PARAMS = {"behaviour": "label_flip"}  # what misbehaving clients do (training/fl/misbehaviour.py)


def parse_field(name: str, raw: Any) -> Any:
    """One simulation field from untrusted input; ValueError with a message a person can act on."""
    if name == "backend":
        if raw not in BACKENDS:
            raise ValueError(f"unknown backend {raw!r}; choose one of {', '.join(BACKENDS)}")
        return raw
    if name == "sim_clients":
        if isinstance(raw, bool):
            raise ValueError("give the number of simulated clients as a whole number")
        try:
            number = float(raw) if raw not in (None, "") else 0.0
        except (TypeError, ValueError):
            raise ValueError(f"{raw!r} is not a number of clients") from None
        if not number.is_integer():
            raise ValueError("give the number of simulated clients as a whole number")
        count = int(number)
        if count > MAX_SIM_CLIENTS:
            raise ValueError(f"{count} simulated clients is over the limit of {MAX_SIM_CLIENTS:,}")
        if count < 0:
            raise ValueError("the number of simulated clients cannot be negative")
        return count
    if name == "sim_availability":
        if raw not in AVAILABILITY_KINDS:
            raise ValueError(
                f"unknown availability model {raw!r}; choose one of {', '.join(AVAILABILITY_KINDS)}"
            )
        return raw
    if name == "sim_trace":
        text = "" if raw is None else str(raw)
        if len(text) > MAX_TRACE_CHARS:
            raise ValueError(f"the trace is over {MAX_TRACE_CHARS:,} characters")
        if text.strip():
            parse_trace_text(text)
        return text
    raise ValueError(f"{name} is not a simulation field")


def parse_trace_text(text: str) -> list[tuple[float, bool]]:
    """A trace in the virtual lab's format; ValueError naming the bad line (or an empty trace)."""
    try:
        events = parse_trace(text)
    except ValueError as exc:
        raise ValueError(f"malformed trace: {exc}") from None
    if not events:
        raise ValueError("malformed trace: it has no '<seconds> on|off' line")
    if any(not math.isfinite(t) or t < 0 for t, _ in events):
        raise ValueError("malformed trace: times must be finite, non-negative seconds")
    return events


def sim_param(params: Mapping[str, Any], name: str) -> Any:
    """A simulation parameter, or its default."""
    if name in TEXT_PARAMS:
        return str(params.get(name, TEXT_PARAMS[name]))
    default = SIM_PARAM_DEFAULTS[name][0]
    value = params.get(name, default)
    return int(value) if name in INTEGER_PARAMS else float(value)


def check(config: Any, errors: dict[str, str]) -> None:
    """The simulation fields against each other and the rest of the job (a lab job may not set them)."""
    if config.backend != "simulation":
        stray = [n for n in ("sim_clients", "sim_trace") if getattr(config, n)] + (
            ["sim_params"] if config.sim_params else []
        )
        if stray:
            errors["backend"] = f"{', '.join(stray)} apply to the simulation backend only"
        return
    if config.sim_clients < 1:
        errors["sim_clients"] = (
            f"a simulation needs 1 to {MAX_SIM_CLIENTS:,} clients, got {config.sim_clients}"
        )
    elif config.clients_per_round > config.sim_clients:
        errors["clients_per_round"] = f"cannot exceed the {config.sim_clients} simulated clients"
    _check_params(config, errors)
    if config.sim_availability == "trace" and not config.sim_trace.strip():
        errors["sim_trace"] = "the trace availability model needs a trace ('<seconds> on|off' lines)"
    if config.influence == "on" or config.auto_exclude or config.backdoor_test:
        errors["influence"] = (
            "influence analysis, automatic exclusion and the backdoor test do not analyse simulated clients "
            "yet: run them on the lab, or set influence off"
        )
    if config.algorithm in ("fedsubavg", "fedavg_full"):
        errors["algorithm"] = "submodel jobs (index requests) run on the lab only"
    if config.device_tags or config.max_phones or config.min_battery or config.require_charging:
        errors["device_tags"] = (
            "phone constraints (tags, max phones, battery, charging) apply to the lab only"
        )


def _check_params(config: Any, errors: dict[str, str]) -> None:
    params = config.sim_params
    unknown = sorted(set(params) - set(SIM_PARAM_DEFAULTS) - set(TEXT_PARAMS))
    if unknown:
        errors["sim_params"] = f"unknown simulation parameter(s): {', '.join(unknown)}"
        return
    for name, value in params.items():
        if name in TEXT_PARAMS:
            continue
        _, lo, hi, _meaning = SIM_PARAM_DEFAULTS[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            errors["sim_params"] = f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}"
            return
        if name in INTEGER_PARAMS and not float(value).is_integer():
            errors["sim_params"] = f"{name} must be a whole number, got {value!r}"
            return
    for low, high in (
        ("speed_min", "speed_max"),
        ("link_mbps_min", "link_mbps_max"),
        ("min_online_p", "max_online_p"),
    ):
        if sim_param(params, low) > sim_param(params, high):
            errors["sim_params"] = f"{low} cannot exceed {high}"
            return
    if sim_param(params, "misbehave") > config.sim_clients:
        errors["sim_params"] = (
            f"misbehave ({sim_param(params, 'misbehave')}) exceeds the {config.sim_clients} clients"
        )
        return
    if "behaviour" in params:
        from training.fl.misbehaviour import parse_behaviour  # noqa: PLC0415 - torch, only when asked

        try:
            parse_behaviour(str(params["behaviour"]))
        except ValueError as exc:
            errors["sim_params"] = f"behaviour: {exc}"
            return
    if config.sim_availability == "alternating" and sim_param(params, "groups") > config.sim_clients:
        errors["sim_params"] = f"{sim_param(params, 'groups')} groups need at least as many clients"


# --- the record: Round.availability of a simulated round -------------------------------------------------
# {"encoding": COMPACT, "states": one character per client, in client index order} instead of a dict of
# N entries (engine/simulation.py writes it, analysis/availability.py reads it).
COMPACT = "compact-v1"
AVAILABILITY_CODES = {"offline": "o", "idle": "i", "selected": "s", "excluded": "x"}
CODE_STATES = {code: state for state, code in AVAILABILITY_CODES.items()}


def sim_client_id(index: int) -> str:
    """A simulated client's id (training.models.sim_client_id, repeated here to keep this module model-free)."""
    return f"s{index:05d}"


def decode_availability(record: dict[str, Any]) -> dict[str, str] | None:
    """A compact simulated record as {client id: state}; None when the record is a lab one."""
    if record.get("encoding") != COMPACT:
        return None
    return {
        sim_client_id(i): CODE_STATES.get(c, "offline") for i, c in enumerate(str(record.get("states", "")))
    }


# --- twins: the same job on the other backend ---------------------------------------------------------------
LAB_ONLY = ("device_tags", "max_phones", "min_battery", "require_charging")
SIM_ONLY = ("sim_clients", "sim_availability", "sim_trace", "sim_params")
NOT_SIMULATED = {"influence": "off", "auto_exclude": False, "backdoor_test": False}


def twin_config(config: Mapping[str, Any], *, lab_clients: int) -> dict[str, Any]:
    """A job's config on the other backend, the rest unchanged: a lab job's simulation twin has as many
    clients as the lab job had phones (`lab_clients`); a simulation's lab twin drops the simulation fields.
    What simulations do not analyse yet (influence, exclusion, backdoor test) is off in a simulation twin."""
    data = dict(config)
    if data.get("backend", "lab") == "simulation":
        for name in SIM_ONLY:
            data.pop(name, None)
        data["backend"] = "lab"
        data["name"] = f"{config.get('name', 'job')} (lab twin)"[:120]
    else:
        for name in LAB_ONLY:
            data.pop(name, None)
        data.update(NOT_SIMULATED)
        data["backend"] = "simulation"
        data["sim_clients"] = max(lab_clients, int(config.get("clients_per_round", 1)))
        data["name"] = f"{config.get('name', 'job')} (simulation twin)"[:120]
    return data
