"""The dashboard's submodel section: figures against the full model, AUC per round, privacy facts."""

from __future__ import annotations

import pytest

from tests.conftest import make_user
from training import submodel_charts, submodel_report
from training.job_config import parse_job_config
from training.services import create_job

FULL = 6_500_000


def test_round_bytes_figure_compares_each_round_with_the_full_model() -> None:
    rows = [
        {"round": 1, "down_mean": 65_000.0, "up_mean": 40_000.0},
        {"round": 2, "down_mean": 60_000.0, "up_mean": 39_000.0},
    ]
    figure = submodel_charts.round_bytes_figure(rows, FULL)
    down, up, full = figure["data"]
    assert figure["layout"]["yaxis"]["type"] == "log"
    unit_size = 10**6  # MB: the largest value is the full model
    assert down["y"] == [0.065, 0.06] and full["y"] == [FULL / unit_size] * 2
    assert "104× smaller" in figure["layout"]["title"]["text"]  # 6.5 MB / 62.5 kB


def test_phone_bytes_figure_scales_the_full_model_by_the_rounds_a_phone_took_part_in() -> None:
    rows = [
        {"phone": "p1", "rounds": 2, "down": 120_000.0, "up": 80_000.0},
        {"phone": "p2", "rounds": 1, "down": 60_000.0, "up": 40_000.0},
    ]
    figure = submodel_charts.phone_bytes_figure(rows, FULL)
    full = figure["data"][2]
    assert full["y"] == [13.0, 6.5]  # MB


def test_auc_figure_has_auc_and_logloss_per_round() -> None:
    figure = submodel_charts.auc_figure(
        [{"round": 1, "auc": 0.61, "logloss": 0.66}, {"round": 2, "auc": 0.64, "logloss": 0.65}]
    )
    auc, logloss = figure["data"]
    assert auc["y"] == [0.61, 0.64] and logloss["yaxis"] == "y2"


@pytest.mark.django_db
def test_privacy_info_of_a_submodel_job_and_none_for_others() -> None:
    owner = make_user("sub-owner", None)
    base = {"dataset": "recsys", "partition": "natural", "model": "ctr"}
    job = create_job(owner, parse_job_config({**base, "algorithm": "fedsubavg"}))
    info = submodel_report.privacy_info(job)
    assert info is not None and info["preset"] == "default"
    assert info["epsilon_per_round"] == pytest.approx(2.019, abs=1e-3)
    assert "secure aggregation" in info["server_view"] and "in the clear" in info["server_view"]
    none = create_job(
        owner, parse_job_config({**base, "algorithm": "fedsubavg", "algorithm_params": {"privacy": "none"}})
    )
    assert submodel_report.privacy_info(none)["epsilon_per_round"] is None  # ∞: no deniability
    baseline = create_job(owner, parse_job_config({**base, "algorithm": "fedavg_full"}))
    assert submodel_report.privacy_info(baseline)["preset"] is None
    assert submodel_report.privacy_info(create_job(owner, parse_job_config({}))) is None
