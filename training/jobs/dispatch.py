"""The one place that queues the engine's and the analyses' Celery tasks — by their registered names.

Why by name: the tasks call the engine, and the engine (and the job services) must queue the next step.
Importing the tasks module here would close that circle; looking the task up in the Celery app's
registry keeps every arrow pointing down (tasks -> engine -> jobs -> dispatch). The task modules are
imported once every app is loaded (TrainingConfig.ready), so the registry holds them in every process —
web, workers, management commands.

Each function mirrors one way of sending (now, later, or after the current transaction commits);
everything takes ids, and the tasks re-read state, so sending one twice is harmless.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from config.celery import app, device_queue
from training.models import ClientResult, Participant

TASK_PREFIX = "training.tasks."


def task(name: str) -> Task:
    """The registered task `training.tasks.<name>` (a KeyError names a task nobody registered)."""
    return app.tasks[TASK_PREFIX + name]


# --- jobs ---------------------------------------------------------------------------------------------
def start_job(job_id: int) -> None:
    task("start_job").delay(job_id)


def start_job_on_commit(job_id: int) -> None:
    task("start_job").delay_on_commit(job_id)


# --- rounds -------------------------------------------------------------------------------------------
def start_round(job_id: int) -> None:
    task("start_round").delay(job_id)


def start_round_on_commit(job_id: int) -> None:
    task("start_round").delay_on_commit(job_id)


def start_round_later(job_id: int, *, countdown: float) -> None:
    task("start_round").apply_async((job_id,), countdown=countdown)


def start_round_later_on_commit(job_id: int, *, countdown: float) -> None:
    task("start_round").apply_async_on_commit((job_id,), countdown=countdown)


def close_round(round_id: int, *, at_deadline: bool = False) -> None:
    if at_deadline:
        task("close_round").delay(round_id, at_deadline=True)
    else:
        task("close_round").delay(round_id)


def close_round_at_deadline_on_commit(round_id: int, *, countdown: float) -> None:
    task("close_round").apply_async_on_commit((round_id,), {"at_deadline": True}, countdown=countdown)


def close_round_on_commit(round_id: int) -> None:
    task("close_round").delay_on_commit(round_id)


# --- simulated clients (backend "simulation": batches on the training queue) --------------------------------
def train_batch(round_id: int, client_indices: list[int]) -> None:
    task("train_batch").delay(round_id, client_indices)


def train_batch_on_commit(round_id: int, client_indices: list[int]) -> None:
    task("train_batch").delay_on_commit(round_id, client_indices)


# --- exports --------------------------------------------------------------------------------------------
def export_onnx(job_id: int) -> None:
    task("export_onnx").delay(job_id)


def export_onnx_on_commit(job_id: int) -> None:
    task("export_onnx").delay_on_commit(job_id)


# --- phones (each on its host's devices queue) ---------------------------------------------------------
def run_client_on_commit(result: ClientResult) -> None:
    """Send one phone's round work to its host's queue once the current transaction commits."""
    task("run_client").apply_async_on_commit((result.pk,), queue=device_queue(result.device.worker_queue))


def cancel_client_on_commit(result: ClientResult) -> None:
    """Stop a phone's run in progress (its round closed or its job was cancelled), on its host's queue."""
    task("cancel_client").apply_async_on_commit((result.pk,), queue=device_queue(result.device.worker_queue))


def redrive_client(result: ClientResult) -> None:
    """Send a phone's round work again now (the watchdog found no live run for it)."""
    task("run_client").apply_async((result.pk,), queue=device_queue(result.device.worker_queue))


def clean_phones_on_commit(job_id: int) -> None:
    """After the current transaction commits, clear the finished job's files from each of its phones
    (on the phone's own devices queue, like its rounds)."""
    for participant in Participant.objects.filter(job_id=job_id, device__isnull=False).select_related(
        "device"
    ):
        task("clean_phone").apply_async_on_commit(
            (job_id, participant.device_id), queue=device_queue(participant.device.worker_queue)
        )


# --- analyses -----------------------------------------------------------------------------------------
def analyse_rounds(job_id: int) -> None:
    task("analyse_rounds").delay(job_id)


def exact_leave_one_out_on_commit(run_id: int) -> None:
    task("exact_leave_one_out").delay_on_commit(run_id)


def send(name: str, *args: Any, **kwargs: Any) -> None:
    """Any other task of ours, now (kept for management commands and tests that name a task)."""
    task(name).delay(*args, **kwargs)
