"""Job configs carry the model's sizes (model_params), checked against the model's declaration; data set
parameters against the data set's. The same parse serves the form, the API and run_job."""

from __future__ import annotations

import pytest

from training.engine.jobdata import job_model_spec, load_job_dataset
from training.fl.nets import spec_parameter_count
from training.jobs.config import JobConfigError, parse_job_config


def test_mlp_hidden_widths_reach_the_model_spec() -> None:
    config = parse_job_config({"model": "mlp", "model_params": {"hidden": [32, 16]}})
    spec = job_model_spec(config, load_job_dataset(config))
    assert spec["hidden"] == [32, 16]
    assert spec_parameter_count(spec) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_nothing_given_keeps_the_spec_as_before() -> None:
    config = parse_job_config({"model": "cnn"})
    assert config.model_params == {}
    spec = job_model_spec(config, load_job_dataset(config))
    assert "channels" not in spec and "fc_width" not in spec


def test_every_model_problem_is_listed_in_one_field_error() -> None:
    with pytest.raises(JobConfigError) as caught:
        parse_job_config({"model": "cnn", "model_params": {"channels": [0, 8], "fc_width": 1.5, "depth": 3}})
    message = caught.value.errors["model_params"]
    assert "unknown parameter(s) depth" in message
    assert "channels every item must be >= 1" in message
    assert "fc_width must be an integer" in message


def test_plugin_model_parameters_are_checked_by_its_declaration() -> None:
    config = parse_job_config({"model": "residual_mlp", "model_params": {"width": 16, "blocks": 1}})
    assert config.model_params == {"width": 16, "blocks": 1}
    with pytest.raises(JobConfigError) as caught:
        parse_job_config({"model": "residual_mlp", "model_params": {"width": "wide"}})
    assert "width must be an integer" in caught.value.errors["model_params"]


def test_dataset_parameters_are_checked_by_the_data_set() -> None:
    with pytest.raises(JobConfigError) as caught:
        parse_job_config({"dataset": "digits", "dataset_params": {"test_fraction": "x", "size": 3}})
    message = caught.value.errors["dataset_params"]
    assert "unknown parameter(s) size" in message and "test_fraction must be a finite number" in message


def test_model_params_refuse_nested_values() -> None:
    with pytest.raises(JobConfigError) as caught:
        parse_job_config({"model": "mlp", "model_params": {"hidden": {"a": 1}}})
    assert "hidden" in caught.value.errors["model_params"]
