"""The final model's ONNX export as a Celery task (training queue), sent by name through dispatch."""

from __future__ import annotations

from celery import shared_task

from training.engine import model_export


@shared_task(name="training.tasks.export_onnx")
def export_onnx(job_id: int) -> None:
    model_export.export_job_onnx(job_id)
