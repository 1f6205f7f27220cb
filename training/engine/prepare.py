"""Job preparation: the data set split among the eligible phones, their shards written, round 0 checkpointed.

prepare_job(job)   data set -> shards -> Participant rows, round-0 checkpoint   [training queue]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from django.db import DatabaseError, transaction

from training.engine import phone_data, simulation, submodel_rounds
from training.engine.jobdata import build_strategy, job_config, job_model_spec, load_job_dataset
from training.engine.selection import eligible_devices
from training.fl.evaluate import evaluate_weights
from training.fl.nets import initial_weights
from training.fl.partition import partition_dataset
from training.fl.wire import save_tensors
from training.jobs import dispatch, services, storage
from training.models import (
    Job,
    JobStatus,
    Participant,
)

log = logging.getLogger(__name__)

PARTITION_PARAM_NAMES = {"dirichlet": "alpha", "shards": "shards_per_client", "quantity": "sigma"}


def prepare_job(job_id: int) -> None:
    """Split the data among the eligible phones, write their shards and the initial model. A job that
    cannot be prepared (a bug, bad parameters the validator missed) fails with the reason."""
    try:
        _prepare_job(job_id)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("preparing job %s failed", job_id)
        services.fail_job(
            Job.objects.get(pk=job_id), f"preparing the job failed: {type(exc).__name__}: {exc}"
        )


def _prepare_job(job_id: int) -> None:
    job = Job.objects.get(pk=job_id)
    if job.status != JobStatus.QUEUED:
        return
    if job.participants.exists():  # prepared before a crash: only the status flip is missing
        _start_running(job)
        return
    config = job_config(job)
    if simulation.is_simulation(config):  # N simulated clients instead of the phones
        simulation.prepare_simulation(job, config)
        return
    pool = eligible_devices(config)
    if config.max_phones:
        pool = pool[: config.max_phones]
    if len(pool) < config.min_reports:
        services.fail_job(
            job,
            f"needs at least {config.min_reports} eligible phones (online, free, matching tags "
            f"{list(config.device_tags) or 'any'}), found {len(pool)}",
        )
        return
    if config.data_on_phone:  # no shards: each phone trains on its own files (engine/phone_data.py)
        phone_data.prepare_resident(job, config, pool)
        return
    splits = load_job_dataset(config)
    param = PARTITION_PARAM_NAMES.get(config.partition)
    params: dict[str, Any] = {}
    if param and config.partition_param is not None:
        params[param] = (
            int(config.partition_param) if param == "shards_per_client" else config.partition_param
        )
    try:
        parts = partition_dataset(config.partition, splits.train, len(pool), seed=config.seed, **params)
    except ValueError as exc:
        services.fail_job(job, f"cannot partition {config.dataset} for {len(pool)} phones: {exc}")
        return
    rows = []
    shards = []
    for index, (device, indices) in enumerate(zip(pool, parts, strict=True)):
        shard = splits.train.subset(indices)
        shards.append(shard)
        path = storage.shard_path(job.pk, index)
        save_tensors(path, {"x": shard.x, "y": shard.y})
        counts = np.bincount(shard.labels, minlength=splits.num_classes).tolist()
        rows.append(
            Participant(
                job=job,
                device=device,
                client_index=index,
                num_samples=len(shard),
                label_counts=counts,
                shard_sha256=storage.file_sha256(path),
                data_source=f"shard of {len(shard)} samples pushed by the server",
            )
        )
    spec = job_model_spec(config, splits)
    strategy = build_strategy(config, len(pool), sum(len(p) for p in parts))
    state = strategy.initial_state(initial_weights(spec, config.seed))
    if submodel_rounds.needs_request(strategy):  # submodel jobs: the union of ids the phones request from
        submodel_rounds.set_union_from_shards(strategy, state, shards)
    evaluation = evaluate_weights(spec, state.weights, splits.test.x, splits.test.y)
    accuracy, loss = evaluation.accuracy, evaluation.loss
    storage.save_checkpoint(job.pk, 0, state, {"accuracy": accuracy, "loss": loss})
    with transaction.atomic():
        Participant.objects.bulk_create(rows)
        job.last_accuracy, job.last_loss = accuracy, loss
        job.save(update_fields=["last_accuracy", "last_loss"])
        services.log(
            job.pk,
            f"prepared: {len(pool)} phones, {config.partition} partition of {len(splits.train)} "
            f"{config.dataset} samples; initial accuracy {accuracy:.3f}",
        )
        _start_running(job)


def _start_running(job: Job) -> None:

    if services.mark_running(job):
        dispatch.start_round_on_commit(job.pk)
