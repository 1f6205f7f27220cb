"""The job options of client influence, exclusion and the backdoor test: defaults, per-field errors, and
the form placing each error on its input."""

from __future__ import annotations

from typing import Any

import pytest

from training.jobs.config import DEFAULTS, JobConfigError, parse_job_config
from training.web.forms import JobForm


def errors_of(**data: Any) -> dict[str, str]:
    with pytest.raises(JobConfigError) as raised:
        parse_job_config(data)
    return raised.value.errors


def test_defaults_leave_influence_to_auto_and_everything_else_off() -> None:
    config = parse_job_config({})
    assert (config.influence, config.influence_budget, config.auto_exclude, config.backdoor_test) == (
        "auto",
        0,
        False,
        False,
    )
    assert config.influence_floor == config.clients_per_round


def test_valid_options_are_kept() -> None:
    config = parse_job_config(
        {
            "influence": "on",
            "influence_budget": "200",
            "auto_exclude": "on",
            "exclude_warmup_rounds": 3,
            "exclude_max_fraction": 0.2,
            "exclude_min_remaining": 9,
            "backdoor_test": True,
            "backdoor_target": 7,
            "backdoor_trigger_size": 3,
            "backdoor_trigger_value": 0.5,
        }
    )
    assert config.influence_budget == 200 and config.auto_exclude and config.backdoor_target == 7
    assert parse_job_config(config.to_dict()) == config  # stored configs parse back to themselves


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"influence": "maybe"}, "influence", "choose one of auto, on, off"),
        ({"influence_budget": -1}, "influence_budget", "between 0 and"),
        ({"influence_budget": 2.5}, "influence_budget", "not a valid value"),
        ({"auto_exclude": "perhaps"}, "auto_exclude", "not a valid value"),
        ({"exclude_max_fraction": 1.5}, "exclude_max_fraction", "between 0.01 and 0.9"),
        ({"exclude_warmup_rounds": -2}, "exclude_warmup_rounds", "between 0 and"),
        ({"backdoor_trigger_size": 0}, "backdoor_trigger_size", "between 1 and 64"),
        ({"backdoor_trigger_value": "nan"}, "backdoor_trigger_value", "not a valid value"),
        ({"backdoor_test": True, "backdoor_target": 10}, "backdoor_target", "classes 0 to 9"),
        ({"algorithm": "scaffold", "influence": "on"}, "influence", "not plain model deltas"),
        ({"auto_exclude": True, "influence": "off"}, "auto_exclude", "needs client influence"),
        ({"auto_exclude": True, "algorithm": "fedlaavg"}, "auto_exclude", "needs client influence"),
        (
            {"auto_exclude": True, "rounds": 5, "exclude_warmup_rounds": 5},
            "exclude_warmup_rounds",
            "before the last",
        ),
        (
            {"clients_per_round": 10, "exclude_min_remaining": 3},
            "exclude_min_remaining",
            "at least the minimum",
        ),
    ],
)
def test_each_bad_option_names_its_field(data: dict[str, Any], field: str, message: str) -> None:
    errors = errors_of(**data)
    assert field in errors and message in errors[field], errors


def test_the_form_shows_influence_errors_on_their_inputs() -> None:
    data = {k: v for k, v in DEFAULTS.to_dict().items() if not k.endswith("_params")}
    data.update(device_tags="", partition_param="", require_charging="", name="f")
    data.update(
        algorithm="scaffold", influence="on", auto_exclude="on", backdoor_test="on", backdoor_target=12
    )
    form = JobForm(data)
    assert not form.is_valid()
    assert "not plain model deltas" in form.errors["influence"][0]
    assert "classes 0 to 9" in form.errors["backdoor_target"][0]
    assert "needs client influence" in form.errors["auto_exclude"][0]
    group = dict(form.groups())["Client influence and attacks"]
    assert [f.name for f in group][:3] == ["influence", "influence_budget", "auto_exclude"]
