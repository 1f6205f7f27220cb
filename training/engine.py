"""The round engine: selection, configuration, reporting, aggregation (after Bonawitz et al. 2019).

Every function here takes ids, re-reads the rows, and is idempotent: a Celery task that runs twice (a
worker killed after doing the work but before acking it) finds the work done and returns. Transitions
are conditional UPDATEs on `Round.status` / `Job.status`, so concurrent callers cannot both win.

    prepare_job(job)        data set → shards → Participant rows, round-0 checkpoint   [training queue]
    start_round(job)        select, lease, configure payloads, fan out run_client       [training queue]
    run_client(result)      push, train, pull, validate one phone (client_runner.py)    [devices queue]
                            (submodel jobs: first the phone's index request, then its
                            own submodel — configure_client; see submodel_rounds.py)
    close_round(round)      at goal or deadline: aggregate, evaluate, checkpoint,       [training queue]
                            commit (or abandon and retry), then the next round
    watchdog()              beat: re-drives rounds whose tasks were lost (Redis restart, dead worker)
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from devices.models import Device, DeviceStatus
from training import leases, services, storage, submodel_rounds
from training.events import send_job_event
from training.fl.client import client_config_for_round
from training.fl.datasets import DatasetSplits, load_dataset
from training.fl.evaluate import evaluate_weights
from training.fl.nets import initial_weights, model_spec_for
from training.fl.partition import partition_dataset
from training.fl.registry import JobContext, make_strategy
from training.fl.strategy import ClientFailure, ClientInfo, ClientUpdate, ServerState, Strategy
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors, save_tensors, write_bytes_atomic
from training.job_config import JobConfig, parse_job_config, strategy_params
from training.models import (
    IN_FLIGHT_STATES,
    OPEN_ROUND_STATUSES,
    ClientResult,
    ClientState,
    Job,
    JobStatus,
    LogLevel,
    Participant,
    Round,
    RoundStatus,
)
from training.signals import round_committed

log = logging.getLogger(__name__)

# Seconds after a round's deadline before the watchdog assumes the deadline task was lost.
DEADLINE_GRACE_S = 15.0
PROGRESS_EVERY_STEPS = 5
# A round abandoned this many times in a row pauses the job: retrying forever would hide a broken lab.
MAX_ROUND_ATTEMPTS = 5
PARTITION_PARAM_NAMES = {"dirichlet": "alpha", "shards": "shards_per_client", "quantity": "sigma"}


# ------------------------------------------------------------------------------------------ job setup


def job_config(job: Job) -> JobConfig:
    return parse_job_config(job.config)


def load_job_dataset(config: JobConfig) -> DatasetSplits:
    return load_dataset(config.dataset, seed=config.data_seed, **config.dataset_params)


def job_model_spec(config: JobConfig, splits: DatasetSplits) -> dict[str, Any]:
    return model_spec_for(
        config.model,
        input_shape=splits.feature_shape,
        num_classes=splits.num_classes,
        **splits.model_kwargs,  # e.g. the CTR model's embedding table sizes
    )


def build_strategy(config: JobConfig, num_clients: int, total_samples: int | None = None) -> Strategy:
    context = JobContext(
        num_clients=num_clients,
        lr=config.lr,
        total_samples=total_samples,
        clients_per_round=config.clients_per_round,
    )
    return make_strategy(config.algorithm, strategy_params(config), context)


def job_strategy(job: Job, config: JobConfig) -> Strategy:
    return build_strategy(config, job.participants.count(), _total_samples(job))


def eligible_devices(config: JobConfig, *, job_id: int | None = None) -> list[Device]:
    """Phones that may take part now: online, free (or already ours), meeting the job's constraints."""
    qs = Device.objects.filter(status=DeviceStatus.ONLINE)
    qs = (
        qs.filter(Q(lease_job_id__isnull=True) | Q(lease_job_id=job_id))
        if job_id
        else qs.filter(lease_job_id__isnull=True)
    )
    for tag in config.device_tags:
        qs = qs.filter(tags__name=tag.lower())
    if config.min_battery:
        qs = qs.filter(Q(battery_level__gte=config.min_battery) | Q(charging=True))
    if config.require_charging:
        qs = qs.filter(charging=True)
    return list(qs.distinct().order_by("pk"))


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
    from training import tasks  # noqa: PLC0415 - tasks import the engine

    if services.mark_running(job):
        tasks.start_round.delay_on_commit(job.pk)


# ---------------------------------------------------------------------------------------- selection


def open_round(job: Job) -> Round | None:
    return job.rounds.filter(status__in=OPEN_ROUND_STATUSES).order_by("-number", "-attempt").first()


def _round_rng(config: JobConfig, round_no: int, attempt: int) -> random.Random:
    return random.Random(f"{config.seed}:{round_no}:{attempt}")  # noqa: S311 - reproducible selection


@dataclass(frozen=True)
class Selection:
    chosen: list[Participant]
    eligible: int
    # Every participant's availability when the round began: device id -> idle (eligible, not picked),
    # selected, offline, busy (leased to another job), ineligible (battery/charging) or excluded.
    availability: dict[str, str]


def select_participants(
    job: Job, config: JobConfig, strategy: Strategy, state: ServerState, round_no: int, attempt: int
) -> Selection:
    everyone = list(job.participants.select_related("device"))
    participants = {p.device_id: p for p in everyone if not p.excluded}
    available = [d.pk for d in eligible_devices(config, job_id=job.pk) if d.pk in participants]
    infos = [
        ClientInfo(
            client_id=str(device_id),
            num_samples=participants[device_id].num_samples,
            last_round=participants[device_id].last_round,
        )
        for device_id in available
    ]
    goal = min(config.selection_count, len(infos))
    chosen_ids = strategy.select(state, round_no, infos, goal, _round_rng(config, round_no, attempt))
    availability = {str(p.device_id): _unavailable_state(p, job.pk) for p in everyone}
    availability.update({str(device_id): "idle" for device_id in available})
    availability.update({cid: "selected" for cid in chosen_ids})
    return Selection(
        chosen=[participants[int(cid)] for cid in chosen_ids], eligible=len(infos), availability=availability
    )


def _unavailable_state(participant: Participant, job_id: int) -> str:
    device = participant.device
    if participant.excluded:
        return "excluded"
    if device.lease_job_id not in (None, job_id):
        return "busy"
    if device.status in (DeviceStatus.ONLINE, DeviceStatus.BUSY):
        return "ineligible"
    return "offline"


def start_round(job_id: int) -> None:
    """Begin the next round of a running job, unless one is already open (idempotent). If that fails,
    the job is paused with the reason (resumable once the cause is fixed), never left spinning."""
    try:
        _start_round(job_id)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("starting a round of job %s failed", job_id)
        leases.release_job(job_id)
        services.pause_for_operator(
            Job.objects.get(pk=job_id), f"starting the next round failed: {type(exc).__name__}: {exc}"
        )


def _start_round(job_id: int) -> None:
    from training import tasks  # noqa: PLC0415

    started = time.monotonic()
    job = Job.objects.get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        return
    existing = open_round(job)
    if existing is not None:
        redrive_round(existing)
        return
    config = job_config(job)
    round_no = job.committed_rounds + 1
    if round_no > config.rounds:
        services.complete_job(job)
        leases.release_job(job.pk)
        return
    attempt = job.rounds.filter(number=round_no).count() + 1
    state = storage.load_checkpoint(job.pk, job.committed_rounds)
    strategy = job_strategy(job, config)
    selection = select_participants(job, config, strategy, state, round_no, attempt)
    leased = set(leases.lease_devices([p.device_id for p in selection.chosen], job.pk))
    chosen = [p for p in selection.chosen if p.device_id in leased]
    if len(chosen) < config.min_reports:
        leases.release_devices(job.pk, [p.device_id for p in chosen])
        services.log(
            job.pk,
            f"round {round_no}: waiting for phones — {len(chosen)} of the needed {config.min_reports} "
            f"are available ({selection.eligible} eligible)",
            level=LogLevel.WARNING,
            round_number=round_no,
        )
        tasks.start_round.apply_async((job.pk,), countdown=5)
        return
    chosen_ids = [str(p.device_id) for p in chosen]
    if submodel_rounds.needs_request(strategy):
        # Submodel jobs: phones get the request payload now and their submodel once their index
        # request is in (client_runner's request step calls configure_client).
        plan = submodel_rounds.request_plan(
            strategy,
            state,
            chosen_ids,
            base_agent_config(config),
            union_file=storage.union_path(job.pk),
            union_on_phone=storage.relative_union_path(job.pk),
        )
    else:
        plan = strategy.configure(state, round_no, chosen_ids, base_agent_config(config))
    deadline = timezone.now() + timedelta(seconds=config.round_deadline_s)
    with transaction.atomic():
        rnd = Round.objects.create(
            job=job,
            number=round_no,
            attempt=attempt,
            status=RoundStatus.TRAINING,
            goal=min(config.clients_per_round, len(chosen)),
            min_reports=min(config.min_reports, len(chosen)),
            deadline_at=deadline,
            availability=selection.availability,
        )
        by_device = {p.device_id: p for p in chosen}
        results = []
        for instructions in plan:
            participant = by_device[int(instructions.client_id)]
            down = write_payload(job, rnd, participant, instructions.tensors, instructions.config)
            results.append(
                ClientResult(job=job, round=rnd, device=participant.device, bytes_down=down, num_samples=None)
            )
        ClientResult.objects.bulk_create(results)
        rnd.select_s = time.monotonic() - started
        rnd.save(update_fields=["select_s"])
        snapshots = [r.snapshot() for r in rnd.client_results.select_related("device", "round")]
        send_job_event(job.pk, "round.started", round=rnd.snapshot(), clients=snapshots)
        services.log(
            job.pk,
            f"round {round_no}{'' if attempt == 1 else f' (attempt {attempt})'}: selected {len(chosen)} of "
            f"{selection.eligible} eligible phones, goal {rnd.goal}, deadline {config.round_deadline_s:.0f} s",
            round_number=round_no,
        )
        for result in rnd.client_results.select_related("device"):
            tasks.dispatch_client(result)
        tasks.close_round.apply_async_on_commit(
            (rnd.pk,), {"at_deadline": True}, countdown=config.round_deadline_s
        )


def base_agent_config(config: JobConfig) -> dict[str, Any]:
    """Local-training settings every phone receives; strategies add their own keys."""
    return {
        "lr": config.lr,
        "epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        # Model replacement's default boost γ = clients per round / server lr (misbehaviour.py) reads it.
        "clients_per_round": config.clients_per_round,
        **{k: v for k, v in config.algorithm_params.items()},
        "deadline_s": max(1.0, config.round_deadline_s * 0.9),
        # A progress line every few steps: the dashboard shows at most 4 updates a second per phone
        # anyway, and each line is an ADB packet the phone, the lab and the worker must handle.
        "progress_every": PROGRESS_EVERY_STEPS,
    }


def write_payload(
    job: Job, rnd: Round, participant: Participant, tensors: dict[str, torch.Tensor], extra: dict[str, Any]
) -> int:
    """Write what one phone receives this round; return the bytes it will download."""
    device = participant.device
    config = job_config(job)
    splits_spec = _model_spec_cached(job, config)
    agent_config = {
        **client_config_for_round(extra, job_seed=config.seed, round_no=rnd.number, client_id=str(device.pk)),
        # The client side the strategy names (FullModelFedAvg runs the "fedsubavg" client), else the job's.
        "algorithm": str(extra.get("algorithm", config.algorithm)),
        "job": job.pk,
        "attempt": rnd.attempt,
        "model": splits_spec,
        "shard": storage.relative_shard_path(job.pk),
        "state_dir": storage.relative_state_dir(job.pk),
        "num_clients": job.participants.count(),
        "num_samples": participant.num_samples,
        "total_samples": _total_samples(job),
    }
    directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, device.pk)
    save_tensors(directory / "global.safetensors", tensors)
    write_bytes_atomic(directory / "config.json", json.dumps(agent_config, sort_keys=True).encode())
    return sum(p.stat().st_size for p in directory.iterdir())


# Per-process caches of what never changes once a job is prepared (its data set and participants).
_DATA_CACHE: dict[int, DatasetSplits] = {}
_TOTAL_CACHE: dict[int, int] = {}


def _job_data(job: Job, config: JobConfig) -> DatasetSplits:
    if job.pk not in _DATA_CACHE:
        _DATA_CACHE[job.pk] = load_job_dataset(config)
    return _DATA_CACHE[job.pk]


def _model_spec_cached(job: Job, config: JobConfig) -> dict[str, Any]:
    return job_model_spec(config, _job_data(job, config))


def _total_samples(job: Job) -> int:
    if job.pk not in _TOTAL_CACHE:
        _TOTAL_CACHE[job.pk] = sum(job.participants.values_list("num_samples", flat=True))
    return _TOTAL_CACHE[job.pk]


def redrive_round(rnd: Round) -> None:
    """Re-send whatever an open round still needs (its tasks may have been lost with a worker or Redis)."""
    from training import tasks  # noqa: PLC0415

    if rnd.status == RoundStatus.AGGREGATING or timezone.now() >= rnd.deadline_at:
        tasks.close_round.delay(rnd.pk, at_deadline=True)
        return
    for result in rnd.client_results.filter(state__in=IN_FLIGHT_STATES).select_related("device"):
        tasks.dispatch_client(result)


# ------------------------------------------------------------------------------------------- closing


def round_ready_to_close(rnd: Round) -> bool:
    """Reporting ends when the goal count reported, or nobody is still in flight."""
    states = list(rnd.client_results.values_list("state", flat=True))
    reported = states.count(ClientState.REPORTED)
    in_flight = sum(s in IN_FLIGHT_STATES for s in states)
    return reported >= rnd.goal or in_flight == 0


def close_round(round_id: int, *, at_deadline: bool = False) -> None:
    """Aggregate a round that reached its goal or its deadline; abandon it if too few reported."""
    rnd = Round.objects.select_related("job").get(pk=round_id)
    if rnd.status != RoundStatus.TRAINING:
        if rnd.status == RoundStatus.AGGREGATING and at_deadline:
            _aggregate(rnd)  # a worker died mid-aggregation: finish it
        return
    if not at_deadline and not round_ready_to_close(rnd):
        return
    if not Round.objects.filter(pk=rnd.pk, status=RoundStatus.TRAINING).update(
        status=RoundStatus.AGGREGATING
    ):
        return  # somebody else closes it
    rnd.refresh_from_db()
    _aggregate(rnd)


def _aggregate(rnd: Round) -> None:
    """Aggregate, or abandon the round with the reason if that fails: a round that cannot be aggregated
    must not sit in `aggregating` forever (the watchdog would retry it in vain). Database errors are
    left to propagate: they are usually transient ("database is locked") and the watchdog retries."""
    try:
        _aggregate_round(rnd)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - any bug or bad data: record it, keep the job moving
        log.exception("aggregating %s failed", rnd)
        _abandon(rnd, f"aggregation failed: {type(exc).__name__}: {exc}")


def _mark_stragglers(rnd: Round) -> None:
    """Phones still in flight when the round closes are late; reports beyond the goal are recorded too."""
    now = timezone.now()
    late_reason = (
        "round deadline passed before it reported"
        if now >= rnd.deadline_at
        else "goal reached before it reported"
    )
    for result in rnd.client_results.filter(state__in=IN_FLIGHT_STATES):
        ClientResult.objects.filter(pk=result.pk, state__in=IN_FLIGHT_STATES).update(
            state=ClientState.LATE, reason=late_reason
        )
    reported = list(rnd.client_results.filter(state=ClientState.REPORTED).order_by("reported_at", "pk"))
    for extra in reported[rnd.goal :]:
        ClientResult.objects.filter(pk=extra.pk).update(
            state=ClientState.LATE, reason="reported after the goal count was reached"
        )


def _aggregate_round(rnd: Round) -> None:
    from training import tasks  # noqa: PLC0415

    started = time.monotonic()
    job = rnd.job
    _mark_stragglers(rnd)
    config = job_config(job)
    results = list(rnd.client_results.select_related("device"))
    reported = [r for r in results if r.state == ClientState.REPORTED]
    if len(reported) < rnd.min_reports:
        _abandon(rnd, f"only {len(reported)} of the minimum {rnd.min_reports} phones reported")
        return
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    strategy = job_strategy(job, config)
    updates = []
    for result in reported:
        path = (
            storage.client_round_dir(job.pk, rnd.number, rnd.attempt, result.device_id) / "update.safetensors"
        )
        updates.append(
            ClientUpdate(
                client_id=str(result.device_id),
                num_samples=int(result.num_samples or 0),
                tensors=load_tensors(path, max_bytes=DEFAULT_MAX_UPDATE_BYTES),
                metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
            )
        )
    failures = [
        ClientFailure(client_id=str(r.device_id), reason=r.reason, state=r.state)
        for r in results
        if r.state != ClientState.REPORTED
    ]
    new_state, metrics = strategy.aggregate(state, rnd.number, updates, failures)
    splits = _job_data(job, config)
    evaluation = evaluate_weights(
        _model_spec_cached(job, config), new_state.weights, splits.test.x, splits.test.y
    )
    accuracy, loss = evaluation.accuracy, evaluation.loss
    metrics = {**metrics, **evaluation.extra}  # model-specific test metrics (CTR: auc, logloss)
    if not (math.isfinite(loss) and all(torch.isfinite(t).all() for t in new_state.weights.values())):
        _abandon(rnd, "aggregated model has non-finite values; round discarded")
        return
    storage.save_checkpoint(job.pk, rnd.number, new_state, {"accuracy": accuracy, "loss": loss})
    aggregate_s = time.monotonic() - started
    _commit(rnd, reported, results, accuracy, loss, metrics, aggregate_s)
    tasks.start_round.delay_on_commit(job.pk)


def _phase_max(results: Sequence[ClientResult], attr: str) -> float:
    return max((getattr(r, attr) for r in results), default=0.0)


def _commit(
    rnd: Round,
    reported: list[ClientResult],
    results: list[ClientResult],
    accuracy: float,
    loss: float,
    metrics: dict[str, float],
    aggregate_s: float,
) -> None:
    now = timezone.now()
    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=RoundStatus.AGGREGATING).update(
            status=RoundStatus.COMMITTED,
            finished_at=now,
            accuracy=accuracy,
            loss=loss,
            metrics={k: float(v) for k, v in metrics.items()},
            push_s=_phase_max(reported, "push_s"),
            train_s=_phase_max(reported, "train_s"),
            pull_s=_phase_max(reported, "pull_s"),
            aggregate_s=aggregate_s,
            wall_s=rnd.select_s + (now - rnd.started_at).total_seconds(),
            bytes_down=sum(r.bytes_down for r in results),
            bytes_up=sum(r.bytes_up for r in results),
        ):
            return
        job = Job.objects.select_for_update().get(pk=rnd.job_id)
        # The guard on committed_rounds makes a replayed commit a no-op: no round is counted twice.
        Job.objects.filter(pk=job.pk, committed_rounds=rnd.number - 1).update(
            committed_rounds=rnd.number, last_accuracy=accuracy, last_loss=loss
        )
        Participant.objects.filter(job_id=job.pk, device_id__in=[r.device_id for r in reported]).update(
            last_round=rnd.number, rounds_reported=F("rounds_reported") + 1
        )
        leases.release_devices(job.pk, [r.device_id for r in results])
        rnd.refresh_from_db()
        job.refresh_from_db()
        send_job_event(job.pk, "round.completed", round=rnd.snapshot(), job=services.job_summary(job))
        round_id, job_id = rnd.pk, job.pk
        transaction.on_commit(lambda: round_committed.send(sender=Round, round_id=round_id, job_id=job_id))
        failed = sum(r.state not in (ClientState.REPORTED,) for r in results)
        services.log(
            job.pk,
            f"round {rnd.number} committed: {len(reported)} reported, {failed} late/failed; "
            f"accuracy {accuracy:.3f}, loss {loss:.3f}, {rnd.wall_s:.1f} s",
            round_number=rnd.number,
        )


def _abandon(rnd: Round, reason: str) -> None:
    from training import tasks  # noqa: PLC0415

    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=RoundStatus.AGGREGATING).update(
            status=RoundStatus.ABANDONED, finished_at=timezone.now(), reason=reason[:200]
        ):
            return
        leases.release_devices(rnd.job_id, list(rnd.client_results.values_list("device_id", flat=True)))
        rnd.refresh_from_db()
        send_job_event(rnd.job_id, "round.abandoned", round=rnd.snapshot())
        if rnd.attempt >= MAX_ROUND_ATTEMPTS:
            services.pause_for_operator(
                rnd.job,
                f"round {rnd.number} was abandoned {rnd.attempt} times (last: {reason}); check the phones and resume",
            )
            return
        services.log(
            rnd.job_id,
            f"round {rnd.number} abandoned and retried: {reason}",
            level=LogLevel.WARNING,
            round_number=rnd.number,
        )
        tasks.start_round.apply_async_on_commit((rnd.job_id,), countdown=1)


# ------------------------------------------------------------------------------------------ watchdog


def watchdog() -> None:
    """Re-drive running jobs whose tasks were lost: a restarted Redis or worker resumes them here."""
    from training import tasks  # noqa: PLC0415

    now = timezone.now()
    for job in Job.objects.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING)):
        if job.status == JobStatus.QUEUED:
            if now - job.created_at > timedelta(seconds=30):
                tasks.start_job.delay(job.pk)
            continue
        rnd = open_round(job)
        if rnd is None:
            tasks.start_round.delay(job.pk)
        elif now > rnd.deadline_at + timedelta(seconds=DEADLINE_GRACE_S):
            tasks.close_round.delay(rnd.pk, at_deadline=True)


def upload_errors(
    rnd: Round, client_id: str, tensors: dict[str, torch.Tensor], num_samples: int
) -> list[str]:
    """Reasons to reject one phone's upload for this round (the strategy decides what is valid)."""
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    strategy = job_strategy(job, job_config(job))
    if submodel_rounds.needs_request(strategy):  # checked against this phone's own recorded request
        directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, int(client_id))
        submodel_rounds.restore_requests(strategy, state, rnd.number, {client_id: directory})
    return strategy.validate_upload(state, client_id, tensors, num_samples)


# ------------------------------------------------------------------- submodel jobs: the request step


def job_needs_request(job: Job) -> bool:
    """Does this job's strategy configure each phone only after its index request (FedSubAvg)?"""
    return submodel_rounds.needs_request(job_strategy(job, job_config(job)))


def request_errors(rnd: Round, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Reasons to reject one phone's index request for this round (empty: accept)."""
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    return submodel_rounds.request_errors(job_strategy(job, job_config(job)), state, tensors)


def max_request_bytes(rnd: Round) -> int:
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    return submodel_rounds.max_request_bytes(job_strategy(job, job_config(job)), state)


def configure_client(rnd: Round, participant: Participant) -> int:
    """Write one phone's submodel download from its recorded request; returns its size in bytes.
    Idempotent: the same checkpoint and request always give the same files."""
    job = rnd.job
    config = job_config(job)
    strategy = job_strategy(job, config)
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    client_id = str(participant.device_id)
    directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, participant.device_id)
    submodel_rounds.restore_requests(strategy, state, rnd.number, {client_id: directory})
    (instructions,) = strategy.configure(state, rnd.number, [client_id], base_agent_config(config))
    write_payload(job, rnd, participant, instructions.tensors, instructions.config)
    return sum((directory / name).stat().st_size for name in ("global.safetensors", "config.json"))
