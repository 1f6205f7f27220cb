"""parse_job_config: the one validator behind the form, the API and run_job."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from training.jobs.config import DEFAULTS, JobConfig, JobConfigError, parse_job_config


def errors_of(data: Any) -> dict[str, str]:
    with pytest.raises(JobConfigError) as raised:
        parse_job_config(data)
    return raised.value.errors


def test_empty_config_is_the_defaults() -> None:
    assert parse_job_config({}) == DEFAULTS


def test_to_dict_round_trips() -> None:
    config = parse_job_config(
        {
            "name": "  prox  ",
            "algorithm": "fedprox",
            "algorithm_params": {"mu": 0.1},
            "partition": "shards",
            "partition_param": 2,
            "device_tags": "lab-a, rooted",
            "require_charging": "yes",
            "rounds": "12",
        }
    )
    assert config.name == "prox" and config.rounds == 12 and config.require_charging is True
    assert config.device_tags == ("lab-a", "rooted")
    assert parse_job_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.5}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"lr": math.inf}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"over_selection": 0.9}, "over_selection"),
        ({"min_battery": 101}, "min_battery"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"algorithm": "magic"}, "algorithm"),
        ({"device_tags": ["fine", "not fine"]}, "device_tags"),
        ({"device_tags": 5}, "device_tags"),
        ({"algorithm_params": {"Bad-Name": 1}}, "algorithm_params"),
        ({"aggregator_params": {"beta": [1, 2]}}, "aggregator_params"),
        ({"name": "   "}, "name"),
        ({"require_charging": "maybe"}, "require_charging"),
        ({"colour": "red"}, "__all__"),
    ],
)
def test_bad_values_are_reported_on_their_field(data: dict[str, Any], field: str) -> None:
    errors = errors_of(data)
    assert set(errors) == {field}
    assert errors[field]  # a message a person can act on


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"partition": "dirichlet"}, "partition_param", "needs its parameter"),
        ({"partition": "dirichlet", "partition_param": 0}, "partition_param", "positive"),
        ({"partition": "shards", "partition_param": 1.5}, "partition_param", "whole number"),
        ({"partition": "natural", "dataset": "digits"}, "partition", "synthetic"),
        ({"clients_per_round": 4, "min_clients": 5}, "min_clients", "cannot exceed"),
    ],
)
def test_inconsistent_combinations(data: dict[str, Any], field: str, fragment: str) -> None:
    assert fragment in errors_of(data)[field]


def test_not_an_object() -> None:
    assert "__all__" in errors_of([("rounds", 3)])  # type: ignore[arg-type]


def test_derived_counts() -> None:
    config = dataclasses.replace(DEFAULTS, clients_per_round=10, over_selection=1.3, min_clients=0)
    assert config.selection_count == 13 and config.min_reports == 8
    assert dataclasses.replace(config, min_clients=3).min_reports == 3
    assert JobConfig(clients_per_round=1).min_reports == 1
