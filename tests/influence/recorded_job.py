"""A small job's record written the way the round engine writes it, without phones or workers.

prepare.prepare_job writes the shards, Participant rows and the round-0 checkpoint; each round then goes
through configure.write_payload (the config.json and global model a phone receives), the real client code
(`client_train`, what the agent runs, with a misbehaviour where asked), the update file, ClientResult rows,
the job's own strategy for aggregation, and storage.save_checkpoint — so the analyses read exactly the
files and rows a real job leaves. Used by the unit tests of the influence pipeline and the exact replay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from django.utils import timezone

from devices.models import Device
from training.engine import configure, jobdata, prepare
from training.fl.client import HONEST, ClientTask, client_train
from training.fl.evaluate import evaluate_weights
from training.fl.strategy import ClientUpdate
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors, save_tensors
from training.jobs import storage
from training.models import ClientResult, ClientState, Job, Participant, Round, RoundStatus

from ..training.web_factories import make_device, make_job

TAG = "recorded"


def tiny_job(owner: Any, phones: int = 4, **config: Any) -> Job:
    """A prepared logistic-regression job on digits over `phones` online phones (no round yet)."""
    for index in range(phones):
        make_device(f"rec-{index}", tags=(TAG,))
    settings = {
        "model": "logreg",
        "rounds": 3,
        "clients_per_round": phones,
        "local_epochs": 1,
        "batch_size": 10,
        "lr": 0.1,
        "device_tags": [TAG],
        "influence": "on",
        **config,
    }
    job = make_job(owner, status="queued", **settings)
    prepare.prepare_job(job.pk)
    job.refresh_from_db()
    assert job.participants.count() == phones, job.error
    return job


def device_named(name: str) -> Device:
    return Device.objects.get(name=name)


def record_round(
    job: Job,
    number: int,
    behaviours: Mapping[str, str] | None = None,
    reporters: Sequence[str] | None = None,
) -> Round:
    """Run and commit round `number` with the named phones (default: all), as the engine would."""
    behaviours = dict(behaviours or {})
    config = jobdata.job_config(job)
    participants = list(job.participants.select_related("device").order_by("client_index"))
    if reporters is not None:
        participants = [p for p in participants if p.device.name in reporters]
    state = storage.load_checkpoint(job.pk, number - 1)
    strategy = jobdata.job_strategy(job, config)
    rnd = Round.objects.create(
        job=job,
        number=number,
        attempt=1,
        status=RoundStatus.AGGREGATING,
        goal=len(participants),
        min_reports=1,
        deadline_at=timezone.now(),
    )
    plan = strategy.configure(
        state, number, [str(p.device_id) for p in participants], configure.base_agent_config(config)
    )
    by_device = {p.device_id: p for p in participants}
    updates = []
    for instructions in plan:
        participant: Participant = by_device[int(instructions.client_id)]
        configure.write_payload(job, rnd, participant, instructions.tensors, instructions.config)
        directory = storage.client_round_dir(job.pk, number, 1, participant.device_id)
        sent = json.loads((directory / "config.json").read_text())
        shard = load_tensors(storage.shard_path(job.pk, participant.client_index), max_bytes=1 << 30)
        task = ClientTask(
            config=sent,
            received=load_tensors(directory / "global.safetensors", max_bytes=DEFAULT_MAX_UPDATE_BYTES),
            x=shard["x"],
            y=shard["y"],
            behaviour=behaviours.get(participant.device.name, HONEST),
        )
        result = client_train(task)
        save_tensors(directory / "update.safetensors", result.upload())
        metrics = result.metrics()
        ClientResult.objects.create(
            job=job,
            round=rnd,
            device=participant.device,
            state=ClientState.REPORTED,
            num_samples=result.num_samples,
            metrics=metrics,
            reported_at=timezone.now(),
        )
        updates.append(ClientUpdate(str(participant.device_id), result.num_samples, result.upload(), metrics))
    new_state, metrics = strategy.aggregate(state, number, updates, [])
    x, y = jobdata.job_data(job, config).test.x, jobdata.job_data(job, config).test.y
    evaluation = evaluate_weights(jobdata.cached_model_spec(job, config), new_state.weights, x, y)
    storage.save_checkpoint(
        job.pk, number, new_state, {"accuracy": evaluation.accuracy, "loss": evaluation.loss}
    )
    Round.objects.filter(pk=rnd.pk).update(
        status=RoundStatus.COMMITTED,
        accuracy=evaluation.accuracy,
        loss=evaluation.loss,
        finished_at=timezone.now(),
    )
    Job.objects.filter(pk=job.pk).update(
        committed_rounds=number, last_accuracy=evaluation.accuracy, last_loss=evaluation.loss
    )
    job.refresh_from_db()
    rnd.refresh_from_db()
    return rnd


def record_rounds(job: Job, rounds: int, behaviours: Mapping[str, str] | None = None) -> None:
    for number in range(job.committed_rounds + 1, rounds + 1):
        record_round(job, number, behaviours)


def tensors_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
