"""Simulation backend settings: refused with clear errors (N = 0, N over the limit, a malformed trace),
and a lab job's settings unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from training.jobs.config import JobConfigError, parse_job_config
from training.jobs.simulation_config import MAX_SIM_CLIENTS


def sim(**overrides: Any) -> dict[str, Any]:
    return {"backend": "simulation", "sim_clients": 100, **overrides}


def errors_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(JobConfigError) as caught:
        parse_job_config(data)
    return caught.value.errors


def test_a_simulation_config_parses_with_its_defaults() -> None:
    config = parse_job_config(sim(sim_availability="markov", sim_params={"mean_on_s": 30, "groups": 3}))
    assert (config.backend, config.sim_clients, config.sim_availability) == ("simulation", 100, "markov")
    assert config.sim_params == {"mean_on_s": 30, "groups": 3}
    assert parse_job_config({}).backend == "lab"


def test_zero_clients_is_refused() -> None:
    assert "1 to 10,000 clients" in errors_of(sim(sim_clients=0))["sim_clients"]


def test_over_the_limit_is_refused() -> None:
    message = errors_of(sim(sim_clients=MAX_SIM_CLIENTS + 1))["sim_clients"]
    assert message == "10001 simulated clients is over the limit of 10,000"


def test_fractional_and_garbage_counts_are_refused() -> None:
    assert "whole number" in errors_of(sim(sim_clients=2.5))["sim_clients"]
    assert "not a number" in errors_of(sim(sim_clients="many"))["sim_clients"]


def test_a_malformed_trace_is_refused_naming_its_line() -> None:
    message = errors_of(sim(sim_availability="trace", sim_trace="0 on\n30 maybe\n"))["sim_trace"]
    assert message == "malformed trace: trace line 2: expected '<seconds> on|off', got '30 maybe'"
    assert "needs a trace" in errors_of(sim(sim_availability="trace"))["sim_trace"]
    assert (
        "no '<seconds> on|off' line"
        in errors_of(sim(sim_availability="trace", sim_trace="# only\n"))["sim_trace"]
    )


def test_unknown_and_out_of_range_parameters_are_refused() -> None:
    assert "unknown simulation parameter(s): warp" in errors_of(sim(sim_params={"warp": 1}))["sim_params"]
    assert (
        "dropout_p must be a number between 0 and 1"
        in errors_of(sim(sim_params={"dropout_p": 2}))["sim_params"]
    )
    assert "speed_min cannot exceed speed_max" in errors_of(sim(sim_params={"speed_min": 3}))["sim_params"]
    assert "behaviour" in errors_of(sim(sim_params={"behaviour": "teleport", "misbehave": 2}))["sim_params"]


def test_clients_per_round_cannot_exceed_the_clients() -> None:
    assert "cannot exceed the 5" in errors_of(sim(sim_clients=5, clients_per_round=10))["clients_per_round"]


def test_a_lab_job_may_not_carry_simulation_settings() -> None:
    assert "apply to the simulation backend only" in errors_of({"sim_clients": 5})["backend"]
    assert "unknown backend 'cloud'" in errors_of({"backend": "cloud"})["backend"]


def test_phone_constraints_do_not_apply_to_a_simulation() -> None:
    assert "apply to the lab only" in errors_of(sim(device_tags=["x"]))["device_tags"]
