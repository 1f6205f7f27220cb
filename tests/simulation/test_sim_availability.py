"""Simulated clients and virtual phones share their availability models, seeds and misbehaving picks:
client i of a simulation with lab_seed S is online exactly when phone i of `virtual_lab --seed S` is."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from devices.virtual.auth import KeyStore
from devices.virtual.lab import LabConfig, VirtualLab
from devices.virtual.misbehaviour import Misbehaviour
from devices.virtual.phone import VirtualPhone
from devices.virtual.profile import AvailabilityProfile
from devices.virtual.runner import SubprocessRunner
from devices.virtual.scenarios import Scenario
from training.engine.sim_clients import SimulatedPopulation
from training.jobs.config import parse_job_config

PHONES = 12
LAB_SEED = 7
TIMES = [i * 17.5 for i in range(400)]  # 0 .. 7000 s, off the period boundaries and on some


def lab_phones(tmp_path: Path, scenario: Scenario | None, **config: Any) -> list[VirtualPhone]:
    lab = VirtualLab(LabConfig(lab_dir=tmp_path, phones=PHONES, seed=LAB_SEED, scenario=scenario, **config))
    profiles = lab.profiles()
    return [phone_of(tmp_path, p, i) for i, p in enumerate(profiles)]


def phone_of(tmp_path: Path, profile: Any, index: int) -> VirtualPhone:
    return VirtualPhone(
        profile,
        index=index,
        host="127.0.0.1",
        port=40000 + index,
        sandbox_root=tmp_path / profile.serial,
        keys=KeyStore(None, tmp_path / ".keys" / profile.serial),
        accept_new_keys=False,
        seed=LAB_SEED,
        runner=SubprocessRunner(),
        started_at=0.0,
    )


def population(availability: str, **params: Any) -> SimulatedPopulation:
    trace = params.pop("_trace", "")
    config = parse_job_config(
        {
            "backend": "simulation",
            "sim_clients": PHONES,
            "clients_per_round": 2,
            "sim_availability": availability,
            "sim_params": {"lab_seed": LAB_SEED, **params},
            "sim_trace": trace,
        }
    )
    return SimulatedPopulation(config)


def sequences(models: list[Any]) -> list[list[bool]]:
    return [[m.online_at(t) for t in TIMES] for m in models]


@pytest.mark.parametrize(
    ("kind", "scenario", "params"),
    [
        ("always", Scenario("always"), {}),
        ("markov", Scenario("markov", mean_on_s=300, mean_off_s=100), {"mean_on_s": 300, "mean_off_s": 100}),
        ("diurnal", Scenario("diurnal", period_s=3600, groups=3), {"period_s": 3600, "groups": 3}),
        ("alternating", Scenario("alternating", period_s=500, groups=2), {"period_s": 500, "groups": 2}),
    ],
)
def test_the_same_on_off_sequences_as_the_virtual_lab(
    tmp_path: Path, kind: str, scenario: Scenario, params: dict[str, Any]
) -> None:
    phones = lab_phones(tmp_path, scenario)
    simulated = population(kind, **params)
    lab = sequences([p.availability for p in phones])
    assert sequences(simulated.models) == lab
    flat = [state for row in lab for state in row]
    if kind != "always":  # the models do switch (a constant sequence would pass anything)
        assert any(flat) and not all(flat)


def test_alternating_by_rounds_turns_every_e_rounds(tmp_path: Path) -> None:
    simulated = population("alternating", period_rounds=3, round_interval_s=60, groups=2)
    turns = [simulated.online(r * 60.0) for r in range(12)]
    group0 = [row[0] for row in turns]
    assert group0 == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert all(row[0] != row[-1] for row in turns)  # the other half is online when the first is not


def test_a_lab_trace_replays_in_simulation(tmp_path: Path) -> None:
    text = "# recorded\n0 on\n120 off\n300 on\n1000 off\n"
    trace = tmp_path / "phone.trace"
    trace.write_text(text)
    profile = AvailabilityProfile(kind="trace", trace_file=str(trace), loop_s=1500)
    base = VirtualLab(LabConfig(lab_dir=tmp_path, phones=PHONES, seed=LAB_SEED)).profiles()
    phones = [phone_of(tmp_path, dataclasses.replace(p, availability=profile), i) for i, p in enumerate(base)]
    simulated = population("trace", loop_s=1500, _trace=text)
    assert sequences(simulated.models) == sequences([p.availability for p in phones])


def test_the_same_phones_misbehave(tmp_path: Path) -> None:
    lab = VirtualLab(
        LabConfig(lab_dir=tmp_path, phones=PHONES, seed=LAB_SEED, misbehaviour=Misbehaviour(3, "label_flip"))
    )
    lab_bad = {i: p.behaviour for i, p in enumerate(lab.profiles()) if p.behaviour != "honest"}
    simulated = population("always", misbehave=3, behaviour="label_flip")
    assert simulated.behaviours == lab_bad and len(lab_bad) == 3


def test_group_by_label_puts_the_clients_of_some_classes_online_together() -> None:
    config = parse_job_config(
        {
            "backend": "simulation",
            "sim_clients": 4,
            "clients_per_round": 1,
            "sim_availability": "alternating",
            "sim_params": {"group_by_label": 1, "groups": 2, "period_s": 100},
        }
    )
    # clients hold classes 9, 0, 7, 2: classes 0-4 are group 0, 5-9 group 1
    counts = [[0] * 9 + [3], [3] + [0] * 9, [0] * 7 + [3, 0, 0], [0, 0, 3] + [0] * 7]
    simulated = SimulatedPopulation(config, counts)
    assert simulated.online(0.0) == [False, True, False, True]
    assert simulated.online(150.0) == [True, False, True, False]
