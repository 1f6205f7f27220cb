"""Starting rounds: select, lease, write each phone's payload, fan the phones' runs out; re-drive lost ones.

    start_round(job)   select, lease, configure payloads, fan out run_client   [training queue]

Idempotent: a round already open is re-driven (its lost tasks re-sent), never opened twice.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from training.engine import simulation, submodel_rounds
from training.engine.configure import base_agent_config, write_payload
from training.engine.jobdata import job_config, job_strategy
from training.engine.selection import select_participants
from training.jobs import dispatch, leases, services, storage
from training.jobs.events import send_job_event
from training.models import (
    IN_FLIGHT_STATES,
    OPEN_ROUND_STATUSES,
    ClientResult,
    Job,
    JobStatus,
    LogLevel,
    Round,
    RoundStatus,
)

log = logging.getLogger(__name__)


def open_round(job: Job) -> Round | None:
    return job.rounds.filter(status__in=OPEN_ROUND_STATUSES).order_by("-number", "-attempt").first()


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
    if simulation.is_simulation(config):
        simulation.start_sim_round(job, config, strategy, state, round_no, attempt, started)
        return
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
        dispatch.start_round_later(job.pk, countdown=5)
        return
    chosen_ids = [str(p.device_id) for p in chosen]
    if submodel_rounds.needs_request(strategy):
        # Submodel jobs: phones get the request payload now and their submodel once their index
        # request is in (client.py's request step calls configure_client).
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
            dispatch.run_client_on_commit(result)
        dispatch.close_round_at_deadline_on_commit(rnd.pk, countdown=config.round_deadline_s)


def redrive_round(rnd: Round) -> None:
    """Re-send whatever an open round still needs (its tasks may have been lost with a worker or Redis)."""

    if rnd.status == RoundStatus.AGGREGATING or timezone.now() >= rnd.deadline_at:
        dispatch.close_round(rnd.pk, at_deadline=True)
        return
    in_flight = list(rnd.client_results.filter(state__in=IN_FLIGHT_STATES).select_related("device"))
    simulated = [r for r in in_flight if r.device_id is None]
    if simulated:
        simulation.redrive_batches(rnd, simulated)
    for result in in_flight:
        if result.device_id is not None:
            dispatch.run_client_on_commit(result)
