"""Celery tasks of the round engine: thin wrappers that take ids and call training/engine.py.

Routing: training.tasks.* go to the `training` queue (config/celery.py), except `run_client`, which does
ADB I/O and is sent to its phone's queue (the shared `devices` queue, or the phone host's own).
All are idempotent and acknowledged late, so a redelivered task is harmless.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init

from config.celery import device_queue
from training import client_runner, engine
from training.models import ClientResult, Participant, Round

# A phone's training run is bounded by the round deadline (≤ 24 h by validation); the hard limit only
# catches a wedged worker thread.
CLIENT_TIME_LIMIT_S = 24 * 3600 + 600


@shared_task(name="training.tasks.start_job")
def start_job(job_id: int) -> None:
    engine.prepare_job(job_id)


@shared_task(name="training.tasks.start_round")
def start_round(job_id: int) -> None:
    engine.start_round(job_id)


@shared_task(
    name="training.tasks.run_client",
    soft_time_limit=CLIENT_TIME_LIMIT_S,
    time_limit=CLIENT_TIME_LIMIT_S + 60,
)
def run_client(result_id: int) -> None:
    client_runner.run_client(result_id)


@shared_task(name="training.tasks.clean_phone")
def clean_phone(job_id: int, device_id: int) -> None:
    client_runner.clean_phone(job_id, device_id)


@shared_task(name="training.tasks.close_round")
def close_round(round_id: int, at_deadline: bool = False) -> None:
    engine.close_round(round_id, at_deadline=at_deadline)


@shared_task(name="training.tasks.analyse_rounds", bind=True, max_retries=120)
def analyse_rounds(self: Any, job_id: int) -> list[int]:
    """Client influence / attack success of every committed round not analysed yet (in order)."""
    from training.analysis.influence import AnalysisBusy, analyse_job  # noqa: PLC0415

    try:
        return analyse_job(job_id).analysed
    except AnalysisBusy as exc:  # another worker is analysing this job; what it leaves, we do after
        raise self.retry(countdown=2) from exc


# The replay retrains every other phone once per round per replayed phone: minutes on a small job.
LOO_TIME_LIMIT_S = 3 * 3600


@shared_task(
    name="training.tasks.exact_leave_one_out",
    soft_time_limit=LOO_TIME_LIMIT_S,
    time_limit=LOO_TIME_LIMIT_S + 60,
)
def exact_leave_one_out(run_id: int) -> None:
    from training.analysis.loo import run_exact_leave_one_out  # noqa: PLC0415

    run_exact_leave_one_out(run_id)


@shared_task(name="training.tasks.watchdog")
def watchdog() -> None:
    engine.watchdog()


# Imported by the data sets only when first loaded (the agent must not need them): in a pool process
# that was during a job's first round, where scikit-learn's import was most of its 0.7 s of selection.
POOL_WARM_IMPORTS = ("sklearn.datasets", "sklearn.model_selection")


@worker_process_init.connect
def warm_up_pool_process(**_: object) -> None:
    """Runs in each prefork pool process (the training worker's) as it starts; threads pools (the devices
    worker's) never send this signal."""
    for module in POOL_WARM_IMPORTS:
        importlib.import_module(module)


def dispatch_client(result: ClientResult) -> None:
    """Send one phone's round work to its host's queue once the current transaction commits."""
    run_client.apply_async_on_commit((result.pk,), queue=device_queue(result.device.worker_queue))


def dispatch_phone_cleanup(job_id: int) -> None:
    """After the current transaction commits, clear the finished job's files from each of its phones
    (on the phone's own devices queue, like its rounds)."""
    for participant in Participant.objects.filter(job_id=job_id).select_related("device"):
        clean_phone.apply_async_on_commit(
            (job_id, participant.device_id), queue=device_queue(participant.device.worker_queue)
        )


def maybe_close_round(round_id: int) -> None:
    rnd = Round.objects.get(pk=round_id)
    if rnd.status == "training" and engine.round_ready_to_close(rnd):
        close_round.delay(round_id)
