"""Celery tasks of the round engine: thin wrappers that take ids and call the engine's modules.

Routing: training.tasks.* go to the `training` queue (config/celery.py), except `run_client`, which does
ADB I/O and is sent to its phone's queue (the shared `devices` queue, or the phone host's own).
All are idempotent and acknowledged late, so a redelivered task is harmless.
"""

from __future__ import annotations

import importlib

from celery import shared_task
from celery.signals import worker_process_init

from training.engine import client, closing, prepare, rounds, sim_training
from training.engine import watchdog as engine_watchdog

# A phone's training run is bounded by the round deadline (≤ 24 h by validation); the hard limit only
# catches a wedged worker thread.
CLIENT_TIME_LIMIT_S = 24 * 3600 + 600


@shared_task(name="training.tasks.start_job")
def start_job(job_id: int) -> None:
    prepare.prepare_job(job_id)


@shared_task(name="training.tasks.start_round")
def start_round(job_id: int) -> None:
    rounds.start_round(job_id)


@shared_task(
    name="training.tasks.run_client",
    soft_time_limit=CLIENT_TIME_LIMIT_S,
    time_limit=CLIENT_TIME_LIMIT_S + 60,
)
def run_client(result_id: int) -> None:
    client.run_client(result_id)


@shared_task(name="training.tasks.train_batch")
def train_batch(round_id: int, client_indices: list[int]) -> None:
    """A batch of a simulated round's clients, trained in-process (engine/sim_training.py)."""
    sim_training.train_batch(round_id, client_indices)


@shared_task(name="training.tasks.cancel_client")
def cancel_client(result_id: int) -> None:
    client.cancel_client(result_id)


@shared_task(name="training.tasks.clean_phone")
def clean_phone(job_id: int, device_id: int) -> None:
    client.clean_phone(job_id, device_id)


@shared_task(name="training.tasks.close_round")
def close_round(round_id: int, at_deadline: bool = False) -> None:
    closing.close_round(round_id, at_deadline=at_deadline)


@shared_task(name="training.tasks.watchdog")
def watchdog() -> None:
    engine_watchdog.watchdog()


# Imported by the data sets only when first loaded (the agent must not need them): in a pool process
# that was during a job's first round, where scikit-learn's import was most of its 0.7 s of selection.
POOL_WARM_IMPORTS = ("sklearn.datasets", "sklearn.model_selection")


@worker_process_init.connect
def warm_up_pool_process(**_: object) -> None:
    """Runs in each prefork pool process (the training worker's) as it starts; threads pools (the devices
    worker's) never send this signal."""
    for module in POOL_WARM_IMPORTS:
        importlib.import_module(module)
