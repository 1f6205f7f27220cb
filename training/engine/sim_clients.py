"""Simulated clients as the virtual lab would make them: availability models, profiles and misbehaviour.

Client i of a simulation with sim_params.lab_seed = S is virtual phone i of `virtual_lab --seed S` with the
same scenario: the same availability model (devices/virtual/scenarios.availability_for), drawn from the
same seed (S·1000003 + i, as devices/virtual/phone.py seeds a phone), and the same misbehaving indices
(devices/virtual/misbehaviour.chosen_indices) — so a simulated job and a lab job see the same on/off
sequences. Time is the simulated clock (simulation.sim_clock): round r starts at (r − 1) · round_interval_s.

Profiles: a compute speed factor (the lab's speed_factor: 2 = training takes twice as long) and a link
speed, each drawn uniformly in its sim_params range from (lab_seed, i).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from devices.virtual.availability import AvailabilityModel, Trace, build_availability
from devices.virtual.misbehaviour import chosen_indices
from devices.virtual.profile import AvailabilityProfile
from devices.virtual.scenarios import Scenario, availability_for
from training.jobs.config import JobConfig
from training.jobs.simulation_config import parse_trace_text, sim_param

# devices/virtual/phone.py: phone_seed = seed * 1_000_003 + index
PHONE_SEED_STRIDE = 1_000_003


def phone_seed(lab_seed: int, index: int) -> int:
    return lab_seed * PHONE_SEED_STRIDE + index


@dataclass(frozen=True)
class ClientProfile:
    speed_factor: float  # seconds of compute per step = step_s · speed_factor
    link_bps: float  # bytes per second each way


@dataclass(frozen=True)
class ShiftedTrace:
    """A trace replayed `offset_s` later (client i of a trace simulation: i · trace_offset_s)."""

    trace: Trace
    offset_s: float

    def online_at(self, t: float) -> bool:
        return self.trace.online_at(t - self.offset_s)


def scenario_of(config: JobConfig) -> Scenario:
    """The virtual lab's scenario for a simulation's availability kind and parameters."""
    params = config.sim_params
    period_rounds = sim_param(params, "period_rounds")
    period_s = sim_param(params, "period_s") or None
    if period_rounds:
        period_s = period_rounds * sim_param(params, "round_interval_s")
    return Scenario(
        kind=config.sim_availability,  # type: ignore[arg-type]  # validated: not "trace" here
        period_s=period_s,
        groups=sim_param(params, "groups"),
        mean_on_s=sim_param(params, "mean_on_s"),
        mean_off_s=sim_param(params, "mean_off_s"),
        min_online_p=sim_param(params, "min_online_p"),
        max_online_p=sim_param(params, "max_online_p"),
        slot_s=sim_param(params, "slot_s") or None,
        peak_at=sim_param(params, "peak_at"),
    )


def availability_profile(config: JobConfig, index: int) -> AvailabilityProfile:
    return availability_for(scenario_of(config), index, config.sim_clients)


def availability_models(config: JobConfig, groups: list[int] | None = None) -> list[AvailabilityModel]:
    """Every client's availability model, as the lab's phone `index` builds its own. `groups` overrides the
    alternating scenario's group of each client (group_by_label: by its main class)."""
    lab_seed = sim_param(config.sim_params, "lab_seed")
    if config.sim_availability == "trace":
        events = parse_trace_text(config.sim_trace)
        loop_s = sim_param(config.sim_params, "loop_s")
        offset = sim_param(config.sim_params, "trace_offset_s")
        trace = Trace(events, loop_s)
        return [ShiftedTrace(trace, i * offset) for i in range(config.sim_clients)]
    profiles = [availability_profile(config, i) for i in range(config.sim_clients)]
    if groups is not None and config.sim_availability == "alternating":
        profiles = [dataclasses.replace(p, group=g) for p, g in zip(profiles, groups, strict=True)]
    return [build_availability(p, phone_seed(lab_seed, i)) for i, p in enumerate(profiles)]


def label_groups(label_counts: list[list[int]], groups: int) -> list[int]:
    """Each client's group by its main class: class c of C goes to group floor(c·G/C) (FedLaAvg's
    experiment: the clients of some classes are online together)."""
    out = []
    for counts in label_counts:
        main = max(range(len(counts)), key=lambda c: counts[c]) if counts else 0
        out.append(main * groups // max(len(counts), 1))
    return out


def profiles(config: JobConfig) -> list[ClientProfile]:
    params = config.sim_params
    lab_seed = sim_param(params, "lab_seed")
    lo, hi = sim_param(params, "speed_min"), sim_param(params, "speed_max")
    link_lo, link_hi = sim_param(params, "link_mbps_min"), sim_param(params, "link_mbps_max")
    out = []
    for i in range(config.sim_clients):
        rng = random.Random(f"profile:{lab_seed}:{i}")  # noqa: S311 - reproducible profiles
        speed = rng.uniform(lo, hi)
        mbps = rng.uniform(link_lo, link_hi)
        out.append(ClientProfile(speed_factor=speed, link_bps=mbps * 1e6 / 8))
    return out


def misbehaving(config: JobConfig) -> dict[int, str]:
    """client index -> behaviour, for the sim_params.misbehave clients the lab would choose."""
    count = sim_param(config.sim_params, "misbehave")
    if not count:
        return {}
    behaviour = sim_param(config.sim_params, "behaviour")
    lab_seed = sim_param(config.sim_params, "lab_seed")
    return dict.fromkeys(chosen_indices(config.sim_clients, count, lab_seed), behaviour)


def dropped_out(config: JobConfig, round_no: int, attempt: int, index: int) -> bool:
    p = sim_param(config.sim_params, "dropout_p")
    if p <= 0:
        return False
    draw = random.Random(f"dropout:{config.seed}:{round_no}:{attempt}:{index}").random()  # noqa: S311
    return draw < p


class SimulatedPopulation:
    """One job's clients: availability models (stateful, lazily extended: kept per process), profiles and
    behaviours. Built once per worker process per job (`population`)."""

    def __init__(self, config: JobConfig, label_counts: list[list[int]] | None = None) -> None:
        self.config = config
        groups = None
        if label_counts is not None and sim_param(config.sim_params, "group_by_label"):
            groups = label_groups(label_counts, sim_param(config.sim_params, "groups"))
        self.models = availability_models(config, groups)
        self.profiles = profiles(config)
        self.behaviours = misbehaving(config)

    def online(self, t: float) -> list[bool]:
        """Who is online at simulated time t."""
        return [model.online_at(t) for model in self.models]

    def timings(self, index: int, steps: int, down_bytes: int, up_bytes: int) -> tuple[float, float, float]:
        """Simulated (push, train, pull) seconds of client `index` for a round of `steps` local steps."""
        profile = self.profiles[index]
        step_s = sim_param(self.config.sim_params, "step_s")
        return (
            down_bytes / profile.link_bps,
            steps * step_s * profile.speed_factor,
            up_bytes / profile.link_bps,
        )


_POPULATIONS: dict[tuple[int, str], SimulatedPopulation] = {}


def population(job_id: int, config: JobConfig) -> SimulatedPopulation:
    key = (job_id, repr(sorted(config.to_dict().items())))
    if key not in _POPULATIONS:
        if len(_POPULATIONS) > 8:  # a worker process serves few jobs at once; forget the old ones
            _POPULATIONS.clear()
        counts = None
        if sim_param(config.sim_params, "group_by_label"):
            from training.models import Participant  # noqa: PLC0415

            rows = Participant.objects.filter(job_id=job_id).order_by("client_index")
            counts = [list(c) for c in rows.values_list("label_counts", flat=True)]
        _POPULATIONS[key] = SimulatedPopulation(config, counts)
    return _POPULATIONS[key]


@lru_cache(maxsize=4096)
def local_steps(num_samples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    steps = math.ceil(max(num_samples, 1) / batch_size) * epochs
    return min(steps, max_steps) if max_steps else steps
