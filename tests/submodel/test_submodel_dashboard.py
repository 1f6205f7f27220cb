"""The dashboard's submodel section: figures against the full model, AUC per round, privacy facts."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from accounts.roles import VIEWERS
from tests.conftest import make_user
from tests.training import web_factories as web
from training.analysis import submodel as submodel_report
from training.jobs import storage
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.web.charts import submodel as submodel_charts

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


@pytest.mark.django_db
def test_the_job_page_and_snapshot_show_the_submodel_section(client: Any) -> None:
    viewer = web.make_user("sub-viewer", VIEWERS)
    job = web.make_job(
        viewer, name="ctr", dataset="recsys", partition="natural", model="ctr", algorithm="fedsubavg"
    )
    path = storage.model_export_path(job.pk, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * FULL)  # stands for the full model's file: only its size is read
    phones = [web.make_device(f"ph-{i}") for i in range(2)]
    for number in (1, 2):
        rnd = web.make_round(
            job, number, accuracy=0.7, loss=0.6, metrics={"auc": 0.6 + number / 100, "logloss": 0.6}
        )
        for phone in phones:
            metrics = {
                "payload_bytes_down": 65_000.0,
                "payload_bytes_up": 40_000.0,
                "request_bytes_down": 5_000.0,
                "request_rows": 500.0,
            }
            web.add_client(rnd, phone, metrics=metrics)
    # A digits job on the same page has no such section.
    other = web.make_job(viewer)
    client.force_login(viewer)

    page = client.get(reverse("training:job-detail", args=[job.pk])).content.decode()
    assert 'data-testid="submodel-section"' in page and "secure aggregation" in page and "2.019" in page
    # A CTR job's headline is its AUC (accuracy says little when most samples are no-clicks).
    assert (
        '<span id="headline-label">AUC</span> <strong id="last-accuracy" data-testid="headline">0.620</strong>'
        in page
    )
    other_page = client.get(reverse("training:job-detail", args=[other.pk])).content.decode()
    assert '<span id="headline-label">accuracy</span>' in other_page
    assert (
        'data-testid="submodel-section"'
        not in client.get(reverse("training:job-detail", args=[other.pk])).content.decode()
    )
    snapshot = client.get(reverse("training:job-snapshot", args=[job.pk])).json()
    assert {"submodel_bytes", "submodel_phone_bytes", "submodel_auc"} <= set(snapshot["figures"])
    assert snapshot["job"]["headline"] == {"label": "AUC", "value": pytest.approx(0.62), "text": "0.620"}
    summary = snapshot["submodel"]
    assert summary["download_reduction"] == pytest.approx(100.0)
    assert summary["submodel_download_reduction"] == pytest.approx(FULL / 60_000)
    assert summary["last_auc"] == pytest.approx(0.62)
    assert [p["rounds"] for p in summary["phones"]] == [2, 2]
