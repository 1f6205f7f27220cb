"""The watchdog (beat, every few seconds): re-drives jobs whose tasks were lost — a restarted Redis or a dead
worker — so no job, round, phone run or lease waits for a person."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from devices.models import Device
from training.engine.closing import round_ready_to_close
from training.engine.rounds import open_round
from training.engine.simulation import redrive_batches
from training.jobs import dispatch, leases, services
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

# Seconds after a round's deadline before the watchdog assumes the deadline task was lost.
DEADLINE_GRACE_S = 5.0


# A job with no open round and no engine activity (every step writes the job log) for this long has lost
# its start_round task. Shorter would race the engine's own retries ("waiting for phones" every 5 s).
IDLE_JOB_AFTER_S = 30.0
# A round stuck aggregating this long lost its worker mid-aggregation (aggregation takes seconds).
AGGREGATION_STALE_S = 60.0
# A phone's task sent this long ago with no live run on it was lost (with Redis or a killed worker).
REDISPATCH_AFTER_S = leases.RUN_STALE_AFTER_S
LEASE_GRACE_S = 60.0


def watchdog() -> None:
    """Beat (every few seconds): give every state a lost task can leave behind a way forward — start the
    next round of a job nobody drives, close rounds past their deadline, finish aggregations whose worker
    died, re-send phones' runs that no live worker holds, and release phones leased with no run on them."""
    now = timezone.now()
    for job in Job.objects.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)):
        if job.status == JobStatus.QUEUED:
            if now - job.created_at > timedelta(seconds=30):
                dispatch.start_job(job.pk)
            continue
        rnd = open_round(job)
        if rnd is None:
            if job.status == JobStatus.RUNNING and _idle(job, now):
                dispatch.start_round(job.pk)
        elif rnd.status == RoundStatus.AGGREGATING:
            if rnd.closed_at is None or now - rnd.closed_at > timedelta(seconds=AGGREGATION_STALE_S):
                dispatch.close_round(rnd.pk, at_deadline=True)
        elif now > rnd.deadline_at + timedelta(seconds=DEADLINE_GRACE_S):
            dispatch.close_round(rnd.pk, at_deadline=True)
        elif round_ready_to_close(rnd):  # its last phone's close_round was lost (e.g. with Redis)
            dispatch.close_round(rnd.pk)
        else:
            redrive_dead_runs(rnd, now)
    release_stranded_leases()


def _idle(job: Job, now: datetime) -> bool:
    last = job.log_entries.order_by("-at").values_list("at", flat=True).first()
    return last is None or now - last > timedelta(seconds=IDLE_JOB_AFTER_S)


def redrive_dead_runs(rnd: Round, now: datetime) -> list[int]:
    """Re-send the runs of phones still in flight in an open round that no live worker holds."""
    cutoff = now - timedelta(seconds=REDISPATCH_AFTER_S)
    lost = (
        rnd.client_results.filter(state__in=IN_FLIGHT_STATES, dispatched_at__lt=cutoff)
        .exclude(leases.live_run_filter(now))
        .select_related("device")
    )
    sent = []
    simulated = [r for r in lost if r.device_id is None]
    if simulated:  # simulated clients: re-send their batches (claims keep live ones alone)
        stamp = ClientResult.objects.filter(pk__in=[r.pk for r in simulated], dispatched_at__lt=cutoff)
        if stamp.update(dispatched_at=now):
            redrive_batches(rnd, simulated)
            sent.extend(r.pk for r in simulated)
    for result in [r for r in lost if r.device_id is not None]:
        if ClientResult.objects.filter(pk=result.pk, dispatched_at=result.dispatched_at).update(
            dispatched_at=now
        ):
            dispatch.redrive_client(result)
            sent.append(result.pk)
    if sent:
        services.log(
            rnd.job_id,
            f"round {rnd.number}: re-sent {len(sent)} phone run(s) that no worker held",
            level=LogLevel.WARNING,
            round_number=rnd.number,
        )
    return sent


def release_stranded_leases(now: datetime | None = None) -> list[int]:
    """Phones leased to a job with no live run and no place in an open round of that job (a lost task, or
    a run whose worker died, left them busy) go back to the pool. start_round leases its phones a moment
    before it writes their results, so a lease with no round since it was taken is left alone for
    LEASE_GRACE_S; one whose round has closed since is released at once."""
    now = now or timezone.now()
    young = now - timedelta(seconds=LEASE_GRACE_S)
    released = []
    leased = Device.objects.filter(lease_job_id__isnull=False)
    for device_id, job_id, leased_at in leased.values_list("pk", "lease_job_id", "status_changed_at"):
        mine = ClientResult.objects.filter(device_id=device_id, job_id=job_id)
        if mine.filter(round__status__in=OPEN_ROUND_STATUSES).exists():
            continue  # its round is still open: the close releases it
        round_over = leased_at is not None and mine.filter(round__started_at__gte=leased_at).exists()
        settled = round_over or leased_at is None or leased_at < young
        if settled and not leases.release_idle(job_id, [device_id]):
            released.append(device_id)
    return released
