"""Lab availability scenarios: command-line parsing, the group rule, the models they build, the hold, and
the description every virtual phone answers to `getprop fedfleet.availability`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from devices import probing
from devices.virtual import android_info
from devices.virtual.availability import AlternatingGroups, Diurnal, MarkovOnOff, build_availability
from devices.virtual.cli import add_lab_arguments, config_from_args
from devices.virtual.lab import LabConfig, LabThread
from devices.virtual.profile import PhoneProfile, build_profiles
from devices.virtual.scenarios import (
    AVAILABILITY_PROPERTY,
    Scenario,
    ScenarioError,
    apply_scenario,
    describe_availability,
    group_of,
)
from tests.virtual.conftest import free_base_port, wait_for


def parse(argv: list[str]) -> LabConfig:
    parser = argparse.ArgumentParser()
    add_lab_arguments(parser)
    return config_from_args(parser.parse_args(argv), default_keys=None, data_dir=Path("/nonexistent"))


def test_alternating_scenario_from_the_command_line() -> None:
    config = parse(["--phones", "20", "--scenario", "alternating", "--period-s", "12.5", "--groups", "2"])
    assert config.scenario == Scenario(kind="alternating", period_s=12.5, groups=2)
    assert config.hold_online_s is None


def test_markov_and_diurnal_options_reach_the_scenario() -> None:
    markov = parse(["--scenario", "markov", "--mean-on-s", "30", "--mean-off-s", "10"]).scenario
    assert markov is not None and (markov.kind, markov.mean_on_s, markov.mean_off_s) == ("markov", 30.0, 10.0)
    diurnal = parse(
        ["--scenario", "diurnal", "--period-s", "600", "--min-online", "0.2", "--max-online", "0.7"]
    )
    assert diurnal.scenario is not None
    assert (diurnal.scenario.period, diurnal.scenario.min_online_p, diurnal.scenario.max_online_p) == (
        600,
        0.2,
        0.7,
    )


def test_no_scenario_keeps_the_profiles_and_hold_defaults() -> None:
    config = parse(["--phones", "3"])
    assert config.scenario is None and config.hold_online_s is None
    assert parse(["--hold-online"]).hold_online_s == math.inf
    assert parse(["--hold-online", "30"]).hold_online_s == 30.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--period-s", "10"], "need --scenario"),
        (["--scenario", "markov", "--period-s", "10"], "does not apply"),
        (["--scenario", "alternating", "--period-s", "0"], "positive"),
        (["--scenario", "alternating", "--groups", "0"], "at least 1"),
        (["--scenario", "markov", "--mean-off-s", "-1"], "positive"),
        (["--scenario", "diurnal", "--min-online", "0.9", "--max-online", "0.1"], "min-online"),
        (["--scenario", "alternating", "--slot-s", "5"], "diurnal only"),
    ],
)
def test_bad_scenario_options_are_refused_with_the_reason(argv: list[str], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(argv)


def test_group_rule_is_contiguous_blocks() -> None:
    assert [group_of(i, 20, 2) for i in range(20)] == [0] * 10 + [1] * 10
    assert [group_of(i, 7, 3) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        group_of(20, 20, 2)


def test_alternating_scenario_builds_the_fedlaavg_models() -> None:
    profiles = apply_scenario(build_profiles(4, [], {}), Scenario("alternating", period_s=10, groups=2))
    models = [build_availability(p.availability, seed=i) for i, p in enumerate(profiles)]
    assert models == [AlternatingGroups(0, 2, 10.0)] * 2 + [AlternatingGroups(1, 2, 10.0)] * 2
    assert [m.online_at(5) for m in models] == [True, True, False, False]
    assert [m.online_at(15) for m in models] == [False, False, True, True]
    # the rest of each profile is kept
    assert [p.model for p in profiles] == [p.model for p in build_profiles(4, [], {})]


def test_diurnal_groups_are_time_zones_and_markov_is_per_phone() -> None:
    diurnal = apply_scenario(build_profiles(4, [], {}), Scenario("diurnal", period_s=100, groups=2))
    peaks = [p.availability.peak_at for p in diurnal]
    assert peaks[0] == peaks[1] and math.isclose((peaks[2] - peaks[0]) % 1.0, 0.5)
    assert isinstance(build_availability(diurnal[0].availability, 0), Diurnal)
    markov = apply_scenario(build_profiles(2, [], {}), Scenario("markov", mean_on_s=5, mean_off_s=5))
    chains = [build_availability(p.availability, seed) for seed, p in enumerate(markov)]
    assert all(isinstance(c, MarkovOnOff) for c in chains)
    assert [c.online_at(t) for t in range(0, 200, 3) for c in chains[:1]] != [
        c.online_at(t) for t in range(0, 200, 3) for c in chains[1:]
    ]


def test_more_alternating_groups_than_phones_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="groups"):
        apply_scenario(build_profiles(2, [], {}), Scenario("alternating", period_s=1, groups=3))


def test_descriptions_are_short_and_say_the_model() -> None:
    profiles = apply_scenario(build_profiles(2, [], {}), Scenario("alternating", period_s=30, groups=2))
    texts = [describe_availability(p.availability) for p in profiles]
    assert texts == ["alternating: group 1 of 2, period 30 s", "alternating: group 2 of 2, period 30 s"]
    assert describe_availability(PhoneProfile().availability) == "always on"
    huge = apply_scenario(build_profiles(2, [], {}), Scenario("alternating", period_s=1e6, groups=2))
    assert describe_availability(huge[0].availability) == "alternating: group 1 of 2, period 1000000 s"
    for kind in ("diurnal", "markov"):
        text = describe_availability(apply_scenario([PhoneProfile()], Scenario(kind))[0].availability)  # type: ignore[arg-type]
        assert text.startswith(kind) and len(text) <= 100 and text.isascii()


def test_phone_answers_its_availability_property_and_the_probe_asks_for_it() -> None:
    profile = apply_scenario([PhoneProfile()], Scenario("markov", mean_on_s=60, mean_off_s=20))[0]
    props = android_info.system_properties(profile)
    assert props[AVAILABILITY_PROPERTY] == "markov on/off: mean on 60 s, off 20 s"
    assert probing.AVAILABILITY_PROPERTY == AVAILABILITY_PROPERTY


def test_hold_keeps_phones_online_until_released_then_the_scenario_runs(tmp_path: Path) -> None:
    base = free_base_port(4)
    config = LabConfig(
        lab_dir=tmp_path / "lab",
        phones=4,
        base_port=base,
        accept_new_keys=True,
        use_zygote=False,
        tick_s=0.05,
        scenario=Scenario("alternating", period_s=3600, groups=2),
        hold_online_s=math.inf,
    )
    with LabThread(config) as lab:
        phones = lab.lab.phones
        assert lab.lab.holding and all(p.online for p in phones)
        assert lab.call(lambda v: v.release_hold()) is True
        wait_for(lambda: [p.online for p in phones] == [True, True, False, False], what="group 1 offline")
        assert not lab.lab.holding and lab.call(lambda v: v.release_hold()) is False
        assert all(p.lab_time() < 60 for p in phones)  # the scenario's clock restarted at the release
        lab.call(lambda v: v.advance_clock(3600))  # one period forward: the other group's turn, now
        assert [p.online for p in phones] == [False, False, True, True]
        lab.call(lambda v: v.advance_clock(3600))
        assert [p.online for p in phones] == [True, True, False, False]
