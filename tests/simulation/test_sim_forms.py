"""A simulation job from the form, the API and run_job; bad ones refused with the validator's words."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design
from __future__ import annotations

import json
from typing import Any

from django.urls import reverse

from tests.training.test_views import form_data, logged_in
from tests.training.web_factories import operator, queued_starts  # noqa: F401 - fixtures
from training.models import Job


def test_a_simulation_job_from_the_form(operator: Any, queued_starts: list) -> None:
    client = logged_in(operator)
    page = client.get(reverse("training:job-create"))
    assert b'name="sim_clients"' in page.content and b'name="backend"' in page.content
    response = client.post(
        reverse("training:job-create"),
        form_data(
            backend="simulation",
            sim_clients="1000",
            sim_availability="alternating",
            sim_params=json.dumps({"period_rounds": 50, "groups": 2}),
            sim_trace="",
        ),
    )
    assert response.status_code == 302
    job = Job.objects.get()
    assert job.config["backend"] == "simulation" and job.config["sim_clients"] == 1000
    assert job.config["sim_params"] == {"period_rounds": 50, "groups": 2}


def test_the_form_refuses_zero_clients_and_a_malformed_trace(operator: Any, queued_starts: list) -> None:
    client = logged_in(operator)
    response = client.post(
        reverse("training:job-create"),
        form_data(backend="simulation", sim_clients="0", sim_availability="trace", sim_trace="5 sideways"),
    )
    assert response.status_code == 200 and not Job.objects.exists()
    text = response.content.decode()
    assert "a simulation needs 1 to 10,000 clients, got 0" in text
    assert "malformed trace: trace line 1" in text


def test_the_api_takes_the_backend(operator: Any, queued_starts: list) -> None:
    client = logged_in(operator)
    body = {"name": "api-sim", "backend": "simulation", "sim_clients": 20000}
    refused = client.post("/api/jobs/", body, content_type="application/json")
    assert refused.status_code == 400
    assert "over the limit of 10,000" in refused.content.decode()
    body["sim_clients"] = 50
    assert client.post("/api/jobs/", body, content_type="application/json").status_code == 201
    assert Job.objects.get().config["sim_clients"] == 50


def test_run_in_simulation_launches_the_twin_and_opens_the_compare_page(
    operator: Any, queued_starts: list
) -> None:
    from training.jobs.config import parse_job_config  # noqa: PLC0415
    from training.jobs.services import create_job  # noqa: PLC0415

    client = logged_in(operator)
    lab = create_job(
        operator, parse_job_config({"name": "lab job", "device_tags": ["lab-a"], "clients_per_round": 5})
    )
    page = client.get(reverse("training:job-detail", args=[lab.pk]))
    assert b"Run in simulation" in page.content
    response = client.post(reverse("training:job-twin", args=[lab.pk]))
    twin = Job.objects.exclude(pk=lab.pk).get()
    assert response.status_code == 302 and response["Location"].endswith(f"?ids={lab.pk},{twin.pk}")
    assert twin.config["backend"] == "simulation" and twin.config["sim_clients"] == 5
    assert twin.config["name"] == "lab job (simulation twin)" and twin.config["device_tags"] == []
    assert {k: v for k, v in twin.config.items() if k in ("lr", "rounds", "seed", "algorithm")} == {
        k: v for k, v in lab.config.items() if k in ("lr", "rounds", "seed", "algorithm")
    }
    # ... and back: the simulation's lab twin.
    assert b"Run on the lab" in client.get(reverse("training:job-detail", args=[twin.pk])).content
    client.post(reverse("training:job-twin", args=[twin.pk]))
    back = Job.objects.order_by("-pk").first()
    assert back is not None and back.config["backend"] == "lab" and back.config["sim_clients"] == 0


def test_run_job_takes_every_saved_example(operator: Any, queued_starts: list) -> None:
    from io import StringIO  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from django.core.management import call_command  # noqa: PLC0415

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.json"))
    assert len(examples) >= 9
    for example in examples:
        call_command("run_job", "--config", str(example), "--owner", operator.username, stdout=StringIO())
    jobs = Job.objects.all()
    assert jobs.count() == len(examples)
    assert {j.config["backend"] for j in jobs} == {"simulation"}
    assert Job.objects.filter(name="FedLaAvg N=1000 E=50").get().config["sim_params"]["group_by_label"] == 1
