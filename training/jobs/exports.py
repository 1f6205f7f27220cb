"""What a job offers for download beside its metrics: the final model as safetensors and as ONNX.

The ONNX file is written by the engine (engine/model_export.py) once a job completes; its check's
figures (onnxruntime against PyTorch on the test set) sit in a JSON file next to it, read here without
importing torch, so pages and the API can show them cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.jobs import storage
from training.models import Job


def onnx_check_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".onnx.json")


def onnx_status(job: Job) -> dict[str, Any] | None:
    """{"round", "path", "size", "check"} once the export is written; {"round", "error"} when it failed;
    None when none was attempted for the job's last committed round."""
    if not job.committed_rounds:
        return None
    path = storage.onnx_export_path(job.pk, job.committed_rounds)
    record = onnx_check_path(path)
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    if path.exists() and isinstance(data.get("check"), dict):
        return {
            "round": job.committed_rounds,
            "path": path,
            "size": path.stat().st_size,
            "check": data["check"],
        }
    return {"round": job.committed_rounds, "error": str(data.get("error", "the export left no file"))}
