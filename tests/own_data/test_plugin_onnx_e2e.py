"""The example plug-in's model trains on virtual phones through real workers (its code reaches the phones
only inside agent.pyz), and the completed job's final model is exported as ONNX, downloadable from the
page and the API, computing what PyTorch computes."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from accounts.roles import OPERATORS
from devices import adb
from devices.models import Device
from tests.conftest import ManagedProcess, VirtualLab, make_user, wait_until
from tests.training.test_engine_integration import register, wait_for_job
from training.engine.jobdata import job_model_spec, load_job_dataset
from training.fl.nets import build_model_from_spec, set_weights
from training.jobs import exports, storage
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientState, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_plugin_model_trains_on_phones_and_its_onnx_export_matches_pytorch(
    celery_worker: dict[str, ManagedProcess],
    virtual_phones: Callable[..., VirtualLab],
    client: object,
    tmp_path: Path,
) -> None:
    register(virtual_phones(3, seed=161), "plugin")
    owner = make_user("plugin-owner", OPERATORS)
    config = parse_job_config(
        {
            "name": "residual mlp",
            "model": "residual_mlp",
            "model_params": {"width": 24, "blocks": 1, "activation": "tanh"},
            "rounds": 3,
            "clients_per_round": 3,
            "local_epochs": 2,
            "round_deadline_s": 60,
            "device_tags": ["plugin"],
        }
    )
    job = wait_for_job(create_job(owner, config), (JobStatus.COMPLETED, JobStatus.FAILED))
    assert job.status == JobStatus.COMPLETED, job.error
    assert job.last_accuracy is not None and job.last_accuracy > 0.6  # chance is 0.1
    assert job.client_results.filter(state=ClientState.REPORTED).count() == 9
    # The model the phones trained is the plug-in's, sized by the job: its code came in agent.pyz, the
    # phone's copy of which carries the plug-in's package.
    device = Device.objects.filter(participations__job=job).first()
    assert device is not None
    pulled = tmp_path / "agent.pyz"
    with adb.connect(adb.Target("tcp", device.address)) as phone:
        phone.pull(storage.phone_agent_path(device.work_dir), pulled)
    with zipfile.ZipFile(pulled) as archive:
        assert any(name.startswith("fedfleet_example/") for name in archive.namelist())
    spec = job_model_spec(config, load_job_dataset(config))
    assert spec["name"] == "residual_mlp" and spec["width"] == 24 and spec["activation"] == "tanh"

    status = wait_until(lambda: exports.onnx_status(job), timeout_s=60, what="the ONNX export")
    assert "error" not in status, status
    assert status["check"]["ok"] and status["check"]["prediction_agreement"] == 1.0

    client.force_login(owner)  # type: ignore[attr-defined]
    page = client.get(f"/jobs/{job.pk}/")  # type: ignore[attr-defined]
    assert b'id="onnx-download"' in page.content and b"checked in onnxruntime" in page.content
    api = client.get(f"/api/jobs/{job.pk}/model.onnx")  # type: ignore[attr-defined]
    assert api.status_code == 200
    onnx_bytes = b"".join(api.streaming_content)
    snapshot = client.get(f"/api/jobs/{job.pk}/snapshot/").json()  # type: ignore[attr-defined]
    assert snapshot["onnx"]["size"] == len(onnx_bytes)

    # The downloaded file predicts what PyTorch predicts with the final weights, on the whole test set.
    test_x = load_job_dataset(config).test.x
    model = build_model_from_spec(spec)
    set_weights(model, storage.load_checkpoint(job.pk, job.committed_rounds).weights)
    with torch.no_grad():
        expected = model(test_x).numpy()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"x": test_x.numpy()})
    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    assert float(np.abs(logits - expected).max()) < 1e-4
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["fedfleet.model_spec"])
    assert metadata["name"] == "residual_mlp"


def test_onnx_download_is_404_before_an_export(client: object, db: None) -> None:
    owner = make_user("onnx-nobody", OPERATORS)
    job = create_job(owner, parse_job_config({"name": "fresh"}))
    client.force_login(owner)  # type: ignore[attr-defined]
    assert client.get(f"/jobs/{job.pk}/model.onnx").status_code == 404  # type: ignore[attr-defined]
    assert client.get(f"/api/jobs/{job.pk}/model.onnx").status_code == 404  # type: ignore[attr-defined]
    # A job that is not completed is not exported on request either.
    refused = client.post(f"/api/jobs/{job.pk}/model.onnx")  # type: ignore[attr-defined]
    assert refused.status_code == 409
