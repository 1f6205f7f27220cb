"""Job pages, JSON endpoints, exports and the REST API: permissions, validation, content."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from safetensors.torch import load_file, save_file

from training.jobs import storage
from training.jobs.config import DEFAULTS
from training.models import Job, JobStatus

from .web_factories import (  # noqa: F401 - fixtures
    add_client,
    add_log,
    make_device,
    make_job,
    make_round,
    operator,
    queued_starts,
    viewer,
)

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(**overrides: Any) -> dict[str, Any]:
    """What the browser posts for the default job (the form's initial values)."""
    data = {k: v for k, v in DEFAULTS.to_dict().items() if not k.endswith("_params")}
    data["device_tags"] = ""
    data["partition_param"] = ""
    data["require_charging"] = ""
    data["name"] = "form job"
    data.update(overrides)
    return data


@pytest.fixture
def job_with_rounds(operator: Any) -> Job:
    job = make_job(operator, name="three rounds", rounds=5, clients_per_round=2)
    phones = [make_device("pixel-1"), make_device("pixel-2")]
    for number, accuracy in ((1, 0.6), (2, 0.85), (3, 0.92)):
        rnd = make_round(
            job,
            number,
            accuracy=accuracy,
            loss=1.0 - accuracy,
            push_s=0.2,
            train_s=1.5,
            wall_s=2.0,
            bytes_down=10_000,
            bytes_up=8_000,
        )
        for phone in phones:
            add_client(rnd, phone, "reported", num_samples=100, loss=0.3)
    current = make_round(job, 4, status="training")
    add_client(current, phones[0], "training", epoch=1, step=3, steps_total=10, loss=0.5)
    add_client(current, phones[1], "failed", reason="connection dropped")
    add_log(job, "round 4 started", round_number=4)
    return job


# --- permissions ----------------------------------------------------------------------------------------
def test_anonymous_pages_redirect_to_login_and_json_answers_401(job_with_rounds: Job) -> None:
    client = Client()
    for name, args in (("training:job-list", []), ("training:job-detail", [job_with_rounds.pk])):
        response = client.get(reverse(name, args=args))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:login"))
    for name, args in (("training:job-snapshot", [job_with_rounds.pk]), ("training:eligible-phones", [])):
        response = client.get(reverse(name, args=args))
        assert response.status_code == 401
        assert response.json()["error"] == "authentication required"
    assert client.get("/api/jobs/").status_code in (401, 403)
    assert client.post(reverse("training:job-pause", args=[job_with_rounds.pk])).status_code == 302
    job_with_rounds.refresh_from_db()
    assert job_with_rounds.status == JobStatus.RUNNING


def test_viewer_watches_but_cannot_create_or_pause(
    viewer: Any, job_with_rounds: Job, queued_starts: list
) -> None:
    client = logged_in(viewer)
    assert client.get(reverse("training:job-list")).status_code == 200
    page = client.get(reverse("training:job-detail", args=[job_with_rounds.pk]))
    assert page.status_code == 200
    assert reverse("training:job-pause", args=[job_with_rounds.pk]).encode() not in page.content
    assert client.get(reverse("training:job-snapshot", args=[job_with_rounds.pk])).status_code == 200
    assert client.get(reverse("training:job-create")).status_code == 403
    assert client.post(reverse("training:job-create"), form_data()).status_code == 403
    assert client.post(reverse("training:job-pause", args=[job_with_rounds.pk])).status_code == 403
    assert client.post("/api/jobs/", {"name": "x"}, content_type="application/json").status_code == 403
    assert client.post(f"/api/jobs/{job_with_rounds.pk}/cancel/").status_code == 403
    job_with_rounds.refresh_from_db()
    assert job_with_rounds.status == JobStatus.RUNNING
    assert Job.objects.count() == 1 and queued_starts == []


def test_operator_creates_a_job_from_the_form(operator: Any, queued_starts: list) -> None:
    client = logged_in(operator)
    page = client.get(reverse("training:job-create"))
    assert page.status_code == 200
    assert b'name="algorithm_param__fedprox__mu"' in page.content
    response = client.post(
        reverse("training:job-create"),
        form_data(
            algorithm="fedprox",
            algorithm_param__fedprox__mu="0.5",
            partition="dirichlet",
            partition_param="0.3",
            device_tags="lab-a, rooted",
            rounds="7",
        ),
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("training:job-detail", args=[job.pk])
    assert job.owner == operator and job.rounds_total == 7 and job.algorithm == "fedprox"
    assert job.config["algorithm_params"]["mu"] == 0.5
    assert job.config["partition_param"] == 0.3
    assert job.config["device_tags"] == ["lab-a", "rooted"]
    assert queued_starts == [job.pk]


def test_a_submodel_job_chooses_its_privacy_preset_from_a_list_that_shows_epsilon(
    operator: Any, queued_starts: list
) -> None:
    client = logged_in(operator)
    page = client.get(reverse("training:job-create")).content.decode()
    assert '<select name="algorithm_param__fedsubavg__privacy"' in page
    assert "default — ε 2.02 per round" in page and "none — ε ∞" in page
    submodel = {
        "dataset": "recsys",
        "partition": "natural",
        "model": "ctr",
        "algorithm": "fedsubavg",
        "partition_param": "",
    }
    refused = client.post(
        reverse("training:job-create"), form_data(**submodel, algorithm_param__fedsubavg__privacy="secret")
    )
    assert "algorithm_param__fedsubavg__privacy" in refused.context["form"].errors
    client.post(
        reverse("training:job-create"),
        form_data(**submodel, algorithm_param__fedsubavg__privacy="whole_union"),
    )
    assert Job.objects.get().config["algorithm_params"]["privacy"] == "whole_union"


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"rounds": "0"}, "rounds", "between 1 and 10000"),
        ({"partition": "dirichlet", "partition_param": ""}, "partition_param", "needs its parameter"),
        ({"partition": "shards", "partition_param": "1.5"}, "partition_param", "whole number"),
        ({"device_tags": "lab-a, bad!tag"}, "device_tags", "bad!tag"),
        ({"min_clients": "20", "clients_per_round": "5"}, "min_clients", "cannot exceed"),
        ({"lr": "abc"}, "lr", "number"),
    ],
)
def test_form_errors_land_on_their_field(
    operator: Any, queued_starts: list, overrides: dict[str, str], field: str, fragment: str
) -> None:
    response = logged_in(operator).post(reverse("training:job-create"), form_data(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert Job.objects.count() == 0 and queued_starts == []


def test_form_reports_field_and_consistency_errors_together(operator: Any, queued_starts: list) -> None:
    response = logged_in(operator).post(
        reverse("training:job-create"), form_data(rounds="0", partition="dirichlet", partition_param="")
    )
    assert set(response.context["form"].errors) == {"rounds", "partition_param"}


def test_form_can_start_from_an_existing_job(operator: Any) -> None:
    source = make_job(operator, name="base", algorithm="fedprox", algorithm_params={"mu": 0.25}, rounds=12)
    page = logged_in(operator).get(reverse("training:job-create") + f"?from={source.pk}")
    form = page.context["form"]
    assert form["rounds"].initial == 12
    assert form["algorithm"].initial == "fedprox"
    assert form["algorithm_param__fedprox__mu"].initial == 0.25
    assert form["name"].initial == "base (again)"


def test_eligible_phones_counts_online_free_tagged_phones(operator: Any) -> None:
    make_device("a", tags=("lab-a",), battery_level=90)
    make_device("b", tags=("lab-a", "rooted"), battery_level=10, charging=False)
    make_device("c", tags=("lab-a",), lease_job_id=99)
    make_device("d", status="offline", tags=("lab-a",))
    make_device("e")
    client = logged_in(operator)
    url = reverse("training:eligible-phones")
    assert client.get(url).json()["eligible"] == 3
    assert client.get(url, {"device_tags": "lab-a"}).json()["eligible"] == 2
    assert client.get(url, {"device_tags": "lab-a", "min_battery": "50"}).json()["eligible"] == 1
    assert client.get(url, {"device_tags": "lab-a rooted"}).json() == {
        "eligible": 1,
        "online": 4,
        "constraints": {"device_tags": ["lab-a", "rooted"], "min_battery": 0, "require_charging": False},
    }
    bad = client.get(url, {"device_tags": "no way!"})
    assert bad.status_code == 400 and "device_tags" in bad.json()["errors"]
    assert b"3</strong>" in client.get(reverse("training:job-create")).content


# --- dashboard, snapshot, actions -----------------------------------------------------------------------
def test_snapshot_json_has_the_dashboard_state_and_figures(viewer: Any, job_with_rounds: Job) -> None:
    data = logged_in(viewer).get(reverse("training:job-snapshot", args=[job_with_rounds.pk])).json()
    assert set(data) >= {"job", "rounds", "current_round", "clients", "participants", "log", "figures"}
    assert data["job"]["committed_rounds"] == 3 and data["job"]["status"] == "running"
    assert [r["number"] for r in data["rounds"]] == [1, 2, 3, 4]
    assert data["current_round"]["number"] == 4
    states = {c["device_name"]: c["state"] for c in data["clients"]}
    assert states == {"pixel-1": "training", "pixel-2": "failed"}
    assert data["log"][0]["message"] == "round 4 started"
    accuracy = data["figures"]["accuracy_loss"]["data"][0]
    assert accuracy["x"] == [1, 2, 3] and accuracy["y"] == [0.6, 0.85, 0.92]
    assert set(data["figures"]) >= {"accuracy_loss", "round_time", "bytes"}  # sections add their own


def test_snapshot_of_a_diverged_round_is_strict_json(viewer: Any, operator: Any) -> None:
    job = make_job(operator)
    make_round(job, 1, accuracy=0.1, loss=float("nan"))

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for name in ("training:job-snapshot", "training:job-export-json"):
        body = logged_in(viewer).get(reverse(name, args=[job.pk])).content
        data = json.loads(body, parse_constant=reject)
        assert data["rounds"][0]["loss"] is None


def test_dashboard_page_wires_the_live_script(operator: Any, job_with_rounds: Job) -> None:
    page = logged_in(operator).get(reverse("training:job-detail", args=[job_with_rounds.pk]))
    html = page.content.decode()
    assert reverse("training:job-snapshot", args=[job_with_rounds.pk]) in html
    assert f"/ws/jobs/{job_with_rounds.pk}/" in html
    assert "job_dashboard.js" in html and "vendor/plotly.min.js" in html
    assert reverse("training:job-pause", args=[job_with_rounds.pk]) in html
    assert reverse("training:job-export-csv", args=[job_with_rounds.pk]) in html


def test_operator_pauses_resumes_and_cancels(operator: Any, job_with_rounds: Job, monkeypatch: Any) -> None:
    from training.engine import tasks
    from training.jobs import leases

    monkeypatch.setattr(tasks.start_round, "delay_on_commit", lambda job_id: None)
    monkeypatch.setattr(leases, "release_job", lambda job_id: None)
    client = logged_in(operator)
    for action, expected in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        response = client.post(reverse(f"training:job-{action}", args=[job_with_rounds.pk]), follow=True)
        job_with_rounds.refresh_from_db()
        assert job_with_rounds.status == expected
        assert f"{action} requested" in response.content.decode()
    response = client.post(reverse("training:job-resume", args=[job_with_rounds.pk]), follow=True)
    assert "a cancelled job cannot be resumed" in response.content.decode()
    assert client.get(reverse("training:job-pause", args=[job_with_rounds.pk])).status_code == 405


# --- list and compare -----------------------------------------------------------------------------------
def test_job_list_shows_progress_and_filters_by_status(
    viewer: Any, operator: Any, job_with_rounds: Job
) -> None:
    make_job(operator, name="finished one", status="completed")
    client = logged_in(viewer)
    html = client.get(reverse("training:job-list")).content.decode()
    assert "three rounds" in html and "finished one" in html
    assert "3 / 5" in html and "92.0%" in html
    filtered = client.get(reverse("training:job-list"), {"status": "completed"}).content.decode()
    assert "finished one" in filtered and "three rounds" not in filtered


def test_compare_overlays_jobs_and_counts_rounds_to_target(
    viewer: Any, operator: Any, job_with_rounds: Job
) -> None:
    slow = make_job(operator, name="slow")
    for number, accuracy in ((1, 0.3), (2, 0.5)):
        make_round(slow, number, accuracy=accuracy)
    client = logged_in(viewer)
    response = client.get(reverse("training:job-compare"), {"ids": f"{job_with_rounds.pk},{slow.pk},9999"})
    rows = {row.job.name: row for row in response.context["rows"]}
    assert rows["three rounds"].rounds_to_target == 3 and rows["slow"].rounds_to_target is None
    assert rows["slow"].final_accuracy == 0.5
    assert response.context["missing_ids"] == [9999]
    names = [trace["name"] for trace in response.context["figure"]["data"]]
    assert names == [f"#{job_with_rounds.pk} three rounds (fedavg)", f"#{slow.pk} slow (fedavg)"]
    lower = client.get(
        reverse("training:job-compare"), {"ids": [str(job_with_rounds.pk), str(slow.pk)], "target": "0.5"}
    )
    assert {row.job.name: row.rounds_to_target for row in lower.context["rows"]} == {
        "three rounds": 1,
        "slow": 2,
    }
    bad = client.get(reverse("training:job-compare"), {"ids": str(slow.pk), "target": "7"})
    assert bad.context["target"] == 0.9 and bad.context["target_error"]


def test_compare_overlays_auc_when_every_job_is_a_click_through_rate_job(viewer: Any, operator: Any) -> None:
    ctr = {"dataset": "recsys", "partition": "natural", "model": "ctr"}
    sub = make_job(operator, name="fedsubavg", algorithm="fedsubavg", **ctr)
    full = make_job(operator, name="full", algorithm="fedavg_full", **ctr)
    for job, aucs in ((sub, (0.60, 0.66, 0.69)), (full, (0.55, 0.58, 0.62))):
        for number, value in enumerate(aucs, start=1):
            make_round(job, number, accuracy=0.3, metrics={"auc": value, "logloss": 0.6})
    client = logged_in(viewer)
    response = client.get(reverse("training:job-compare"), {"ids": f"{sub.pk},{full.pk}"})
    assert response.context["metric"] == "AUC" and response.context["target"] == 0.65
    rows = {row.job.name: row for row in response.context["rows"]}
    assert rows["fedsubavg"].rounds_to_target == 2 and rows["full"].rounds_to_target is None
    assert rows["fedsubavg"].final_accuracy == pytest.approx(0.69)  # the AUC, not the click accuracy
    figure = response.context["figure"]
    assert (
        figure["data"][0]["y"] == [0.60, 0.66, 0.69] and figure["layout"]["yaxis"]["title"]["text"] == "AUC"
    )
    html = response.content.decode()
    assert "Final AUC" in html and "0.690" in html and "AUC 0.65" in html
    # With a digits job among them, the page compares accuracy.
    digits = make_job(operator, name="digits")
    mixed = client.get(reverse("training:job-compare"), {"ids": f"{sub.pk},{digits.pk}"})
    assert mixed.context["metric"] == "accuracy" and mixed.context["target"] == 0.9


# --- exports --------------------------------------------------------------------------------------------
def test_csv_export_has_one_row_per_committed_round(viewer: Any, job_with_rounds: Job) -> None:
    response = logged_in(viewer).get(reverse("training:job-export-csv", args=[job_with_rounds.pk]))
    assert response["Content-Disposition"] == f'attachment; filename="job-{job_with_rounds.pk}-rounds.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[2]["accuracy"] == "0.92" and rows[0]["reported"] == "2" and rows[1]["bytes_up"] == "8000"


def test_csv_export_of_a_new_job_is_a_header(viewer: Any, operator: Any) -> None:
    job = make_job(operator, status="queued")
    text = logged_in(viewer).get(reverse("training:job-export-csv", args=[job.pk])).content.decode()
    assert text.strip().startswith("round,attempt,accuracy,loss")
    assert len(text.strip().splitlines()) == 1


def test_json_export_has_the_job_and_its_rounds(viewer: Any, job_with_rounds: Job) -> None:
    response = logged_in(viewer).get(reverse("training:job-export-json", args=[job_with_rounds.pk]))
    body = json.loads(response.content)
    assert body["job"]["name"] == "three rounds" and body["job"]["config"]["rounds"] == 5
    assert [r["accuracy"] for r in body["rounds"]] == [0.6, 0.85, 0.92]


def test_final_model_download(viewer: Any, job_with_rounds: Job, settings: Any, tmp_path: Any) -> None:
    import torch

    settings.FEDFLEET_DATA_DIR = tmp_path
    client = logged_in(viewer)
    url = reverse("training:job-model", args=[job_with_rounds.pk])
    assert client.get(url).status_code == 404
    path = storage.model_export_path(job_with_rounds.pk, 3)
    path.parent.mkdir(parents=True)
    save_file({"fc.weight": torch.ones(2, 3)}, str(path))
    response = client.get(url)
    assert response.status_code == 200
    assert f'filename="job-{job_with_rounds.pk}-round-3.safetensors"' in response["Content-Disposition"]
    download = tmp_path / "download.safetensors"
    download.write_bytes(b"".join(response.streaming_content))
    assert load_file(str(download))["fc.weight"].shape == (2, 3)


# --- REST API -------------------------------------------------------------------------------------------
def test_api_validates_like_the_form_and_creates(operator: Any, queued_starts: list) -> None:
    client = logged_in(operator)
    bad = client.post(
        "/api/jobs/", {"rounds": 0, "partition": "dirichlet", "bogus": 1}, content_type="application/json"
    )
    assert bad.status_code == 400
    assert "rounds" in bad.json() and "non_field_errors" in bad.json()
    good = client.post(
        "/api/jobs/",
        {"name": "api job", "rounds": 4, "algorithm": "fedprox"},
        content_type="application/json",
    )
    assert good.status_code == 201
    job = Job.objects.get(name="api job")
    assert good.json()["id"] == job.pk and job.rounds_total == 4 and queued_starts == [job.pk]
    listing = client.get("/api/jobs/", {"status": "queued"}).json()
    assert [j["name"] for j in listing["results"]] == ["api job"]


def test_api_reads_for_viewers(viewer: Any, job_with_rounds: Job) -> None:
    client = logged_in(viewer)
    assert client.get(f"/api/jobs/{job_with_rounds.pk}/").json()["committed_rounds"] == 3
    snapshot = client.get(f"/api/jobs/{job_with_rounds.pk}/snapshot/").json()
    assert snapshot["current_round"]["number"] == 4 and "figures" in snapshot
