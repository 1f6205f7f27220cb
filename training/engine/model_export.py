"""The final model as ONNX beside its safetensors: exported, then checked in onnxruntime against PyTorch
on the job's test set (training/fl/onnx_export.py), written only when the check passes.

Run on the training queue when a job completes (or when someone asks for a job that completed before);
idempotent: a file already there for the job's last round is left alone. The check's figures are stored
as JSON next to the file, so the job page and the API can show them without re-running anything.
"""

from __future__ import annotations

import json
import logging

from training.engine.jobdata import cached_model_spec, job_config, job_data
from training.fl.onnx_export import OnnxExportError, save_onnx
from training.fl.wire import write_bytes_atomic
from training.jobs import services, storage
from training.jobs.exports import onnx_check_path
from training.models import Job, JobStatus, LogLevel

log = logging.getLogger(__name__)


def export_job_onnx(job_id: int) -> None:
    job = Job.objects.get(pk=job_id)
    if job.status != JobStatus.COMPLETED or not job.committed_rounds:
        return
    path = storage.onnx_export_path(job.pk, job.committed_rounds)
    if path.exists() and onnx_check_path(path).exists():
        return
    config = job_config(job)
    spec = cached_model_spec(job, config)
    weights = storage.load_checkpoint(job.pk, job.committed_rounds).weights
    try:
        check = save_onnx(path, spec, weights, job_data(job, config).test.x)
    except (OnnxExportError, ValueError, RuntimeError) as exc:  # recorded, so the page says why
        write_bytes_atomic(onnx_check_path(path), json.dumps({"error": str(exc)}).encode())
        services.log(job.pk, f"ONNX export failed: {exc}", level=LogLevel.ERROR)
        return
    write_bytes_atomic(onnx_check_path(path), json.dumps({"check": check.to_json()}).encode())
    services.log(
        job.pk,
        f"exported the final model as ONNX ({path.stat().st_size} bytes): onnxruntime agrees with PyTorch "
        f"on {check.prediction_agreement:.1%} of {check.samples} test predictions, max |Δ| "
        f"{check.max_abs_diff:.2g}",
    )
