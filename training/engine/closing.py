"""Closing a round (steps 3 and 4): at its goal or deadline, aggregate, evaluate, checkpoint and commit —
or abandon it with the reason and retry — then start the next round.

Transitions are conditional UPDATEs on `Round.status` / `Job.status`, so a replayed close, a late phone and
the deadline task cannot all win; `committed_rounds` is guarded so no round is counted twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from training.engine.jobdata import cached_model_spec, job_config, job_data, job_strategy
from training.engine.sim_updates import simulated_updates
from training.fl.evaluate import evaluate_weights
from training.fl.strategy import ClientFailure, ClientUpdate
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors
from training.jobs import dispatch, leases, services, storage
from training.jobs.events import send_job_event
from training.jobs.signals import round_committed
from training.models import (
    IN_FLIGHT_STATES,
    ClientResult,
    ClientState,
    Job,
    LogLevel,
    Participant,
    Round,
    RoundStatus,
)

log = logging.getLogger(__name__)

# A round abandoned this many times in a row pauses the job: retrying forever would hide a broken lab.
MAX_ROUND_ATTEMPTS = 5


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
        status=RoundStatus.AGGREGATING, closed_at=timezone.now()
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
    # Weights come from the server's partition record, never from what a phone claims.
    simulated = any(r.device_id is None for r in results)
    updates = []
    if simulated:  # simulated clients: their updates are in their batches' files (engine/sim_training.py)
        by_index = dict(
            Participant.objects.filter(
                job=job, client_index__in=[r.client_index for r in reported]
            ).values_list("client_index", "num_samples")
        )
        updates = simulated_updates(rnd, reported, by_index)
    shard_samples = (
        {} if simulated else dict(Participant.objects.filter(job=job).values_list("device_id", "num_samples"))
    )
    for result in [] if simulated else reported:
        path = (
            storage.client_round_dir(job.pk, rnd.number, rnd.attempt, result.device_id) / "update.safetensors"
        )
        updates.append(
            ClientUpdate(
                client_id=str(result.device_id),
                # The validated claim (client.py), never above the shard the server recorded.
                num_samples=min(
                    result.num_samples or shard_samples[result.device_id], shard_samples[result.device_id]
                ),
                tensors=load_tensors(path, max_bytes=DEFAULT_MAX_UPDATE_BYTES),
                metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
            )
        )
    failures = [
        ClientFailure(client_id=r.client_id, reason=r.reason, state=r.state)
        for r in results
        if r.state != ClientState.REPORTED
    ]
    new_state, metrics = strategy.aggregate(state, rnd.number, updates, failures)
    splits = job_data(job, config)
    evaluation = evaluate_weights(
        cached_model_spec(job, config), new_state.weights, splits.test.x, splits.test.y
    )
    accuracy, loss = evaluation.accuracy, evaluation.loss
    metrics = {**metrics, **evaluation.extra}  # model-specific test metrics (CTR: auc, logloss)
    if not (math.isfinite(loss) and all(torch.isfinite(t).all() for t in new_state.weights.values())):
        _abandon(rnd, "aggregated model has non-finite values; round discarded")
        return
    storage.save_checkpoint(job.pk, rnd.number, new_state, {"accuracy": accuracy, "loss": loss})
    aggregate_s = time.monotonic() - started
    if _commit(rnd, reported, results, accuracy, loss, metrics, aggregate_s):
        dispatch.start_round_on_commit(job.pk)  # only the close that committed starts the next round


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
) -> bool:
    """Commit the round; False when another close got there first (nothing is counted twice)."""
    now = timezone.now()
    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=RoundStatus.AGGREGATING).update(
            status=RoundStatus.COMMITTED,
            finished_at=now,
            accuracy=accuracy,
            loss=loss,
            # A simulated round keeps what it recorded at its start (sim_wall_s, sim_clock_s).
            metrics={**rnd.metrics, **{k: float(v) for k, v in metrics.items()}},
            push_s=_phase_max(reported, "push_s"),
            train_s=_phase_max(reported, "train_s"),
            pull_s=_phase_max(reported, "pull_s"),
            aggregate_s=aggregate_s,
            wall_s=rnd.select_s + (now - rnd.started_at).total_seconds(),
            bytes_down=sum(r.bytes_down for r in results),
            bytes_up=sum(r.bytes_up for r in results),
        ):
            return False
        job = Job.objects.select_for_update().get(pk=rnd.job_id)
        # The guard on committed_rounds makes a replayed commit a no-op: no round is counted twice.
        Job.objects.filter(pk=job.pk, committed_rounds=rnd.number - 1).update(
            committed_rounds=rnd.number, last_accuracy=accuracy, last_loss=loss
        )
        reporters = Participant.objects.filter(job_id=job.pk)
        if any(r.device_id is None for r in reported):  # simulated clients are named by their index
            reporters = reporters.filter(
                device__isnull=True, client_index__in=[r.client_index for r in reported]
            )
        else:
            reporters = reporters.filter(device_id__in=[r.device_id for r in reported])
        reporters.update(last_round=rnd.number, rounds_reported=F("rounds_reported") + 1)
        stop_and_release(job.pk, results)
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
    return True


def _abandon(rnd: Round, reason: str) -> None:

    with transaction.atomic():
        if not Round.objects.filter(pk=rnd.pk, status=RoundStatus.AGGREGATING).update(
            status=RoundStatus.ABANDONED, finished_at=timezone.now(), reason=reason[:200]
        ):
            return
        stop_and_release(rnd.job_id, list(rnd.client_results.select_related("device")))
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
        dispatch.start_round_later_on_commit(rnd.job_id, countdown=1)


def maybe_close_round(round_id: int) -> None:
    """Close the round now if it is ready (a phone just finished); the close task re-checks."""
    rnd = Round.objects.get(pk=round_id)
    if rnd.status == RoundStatus.TRAINING and round_ready_to_close(rnd):
        dispatch.close_round(round_id)


def stop_and_release(job_id: int, results: Sequence[ClientResult]) -> None:
    """After a round closed: phones whose run is still alive (late ones, still training) are told to stop
    through their runtime and keep their lease until the run ends (client.run_client releases it then);
    the others are released now. Simulated clients hold no phone and no lease."""
    results = [r for r in results if r.device_id is not None]
    if not results:
        return
    running = leases.release_idle(job_id, [r.device_id for r in results])
    for result in results:
        if result.device_id in running:
            dispatch.cancel_client_on_commit(result)
