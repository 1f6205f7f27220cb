"""The new-job form renders each model's declared parameters (list types as "200,200"), validates them
with the declaration, shows the parameter count (and updates it through model-size.json), labels
plug-ins, and offers phone-resident data."""

from __future__ import annotations

from typing import Any

import pytest

from tests.training.test_views import form_data
from training.models import Job

pytestmark = pytest.mark.django_db


def test_the_form_shows_declared_parameters_plugin_labels_and_the_size(operator_client: Any) -> None:
    html = operator_client.get("/jobs/new/").content.decode()
    assert 'name="model_param__mlp__hidden"' in html and 'value="200,200"' in html
    assert "widths of the hidden layers; whole numbers, comma-separated ≥ 1, ≤ 4096 each" in html
    assert 'name="model_param__residual_mlp__activation"' in html  # a plug-in's select
    assert "Residual MLP (example plug-in)" in html and "blobs" in html
    # The default MLP on digits: 64·200+200 + 200·200+200 + 200·10+10 parameters.
    assert "55,210 parameters" in html
    assert 'name="data_on_phone"' in html and 'name="phone_data_report"' in html


def test_model_parameters_reach_the_job_and_bad_ones_are_refused(operator_client: Any) -> None:
    response = operator_client.post(
        "/jobs/new/", form_data(model="mlp", **{"model_param__mlp__hidden": "32, 16"})
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Job.objects.get().config["model_params"] == {"hidden": [32, 16]}

    refused = operator_client.post(
        "/jobs/new/",
        form_data(model="cnn", **{"model_param__cnn__channels": "8,x", "model_param__cnn__fc_width": "0"}),
    )
    assert refused.status_code == 200
    html = refused.content.decode()
    assert (
        "channels must be an integer, got &#x27;x&#x27;" in html and "fc_width must be &gt;= 1, got 0" in html
    )
    assert Job.objects.count() == 1


def test_model_size_json_follows_the_fields(operator_client: Any) -> None:
    small = operator_client.get("/jobs/model-size.json", {"model": "mlp", "model_param__mlp__hidden": "32"})
    assert small.status_code == 200 and small.json()["parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    plugin = operator_client.get(
        "/jobs/model-size.json",
        {
            "model": "residual_mlp",
            "model_param__residual_mlp__width": "8",
            "model_param__residual_mlp__blocks": "0",
        },
    )
    assert plugin.json()["parameters"] == 64 * 8 + 8 + 8 * 10 + 10
    bad = operator_client.get("/jobs/model-size.json", {"model": "mlp", "model_param__mlp__hidden": "0"})
    assert bad.status_code == 400 and "hidden every item must be >= 1" in bad.json()["text"]


def test_a_phone_resident_job_from_the_form(operator_client: Any) -> None:
    response = operator_client.post(
        "/jobs/new/", form_data(data_on_phone="on", phone_data_dir="mydata", phone_data_report="on")
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    config = Job.objects.get().config
    assert (
        config["data_on_phone"] is True
        and config["phone_data_dir"] == "mydata"
        and config["phone_data_report"]
    )
    refused = operator_client.post("/jobs/new/", form_data(data_on_phone="on", phone_data_dir="../etc"))
    assert "a folder inside the phone" in refused.content.decode()


def test_the_api_and_run_job_use_the_same_checks(operator_client: Any, tmp_path: Any) -> None:
    import json  # noqa: PLC0415

    from django.core.management import CommandError, call_command  # noqa: PLC0415

    bad = {"name": "api", "model": "cnn", "model_params": {"channels": [4, 0]}}
    response = operator_client.post("/api/jobs/", bad, content_type="application/json")
    assert response.status_code == 400
    assert "channels every item must be >= 1, got 0" in response.json()["model_params"][0]
    good = {"name": "api", "model": "residual_mlp", "model_params": {"width": 12, "blocks": 1}}
    created = operator_client.post("/api/jobs/", good, content_type="application/json")
    assert created.status_code == 201 and Job.objects.get().config["model_params"] == {
        "width": 12,
        "blocks": 1,
    }

    path = tmp_path / "job.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(CommandError) as caught:
        call_command("run_job", config=str(path))
    assert caught.value.returncode == 2 and "channels every item must be >= 1" in str(caught.value)
