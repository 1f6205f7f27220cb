"""The one place that writes jobs and emits their events (Zulip style); views and tasks stay thin.

Status changes use conditional UPDATEs (`filter(status=...).update(...)`) so two workers, or a worker and
a person pressing "pause", never both win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from training.jobs import dispatch, leases, storage
from training.jobs.config import JobConfig, parse_job_config
from training.jobs.events import send_job_event
from training.models import (
    FINISHED_JOB_STATUSES,
    IN_FLIGHT_STATES,
    OPEN_ROUND_STATUSES,
    ClientResult,
    ClientState,
    Exclusion,
    ExclusionAction,
    Job,
    JobLogEntry,
    JobStatus,
    LogLevel,
    Participant,
    Round,
    RoundStatus,
)


class JobActionError(Exception):
    """An action that does not apply to the job's current status (e.g. resuming a completed job)."""


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "status_badge": job.status_badge,
        "algorithm": job.algorithm,
        "dataset": job.dataset,
        "model": job.model_name,
        "rounds_total": job.rounds_total,
        "committed_rounds": job.committed_rounds,
        "clients_per_round": job.clients_per_round,
        "last_accuracy": job.last_accuracy,
        "last_loss": job.last_loss,
        "headline": job.headline,
        "error": job.error,
        "config": job.config,
        "owner": job.owner.get_username(),
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def log(job_id: int, message: str, *, level: str = LogLevel.INFO, round_number: int | None = None) -> None:
    entry = JobLogEntry.objects.create(
        job_id=job_id, message=message[:500], level=level, round_number=round_number
    )
    send_job_event(job_id, "job.log", entry=entry.snapshot())


def create_job(owner: AbstractBaseUser, config: JobConfig) -> Job:
    """Persist a validated job and queue its start once the row is committed."""

    with transaction.atomic():
        job = Job.objects.create(
            name=config.name,
            owner=owner,
            config=config.to_dict(),
            algorithm=config.algorithm,
            dataset=config.dataset,
            model_name=config.model,
            rounds_total=config.rounds,
            clients_per_round=config.clients_per_round,
        )
        log(job.pk, f"job created by {owner.get_username()}")
        dispatch.start_job_on_commit(job.pk)
    return job


def _set_status(job: Job, new: str, *, allowed_from: tuple[str, ...], **fields: Any) -> bool:

    updated = Job.objects.filter(pk=job.pk, status__in=allowed_from).update(status=new, **fields)
    if updated:
        job.refresh_from_db()
        send_job_event(job.pk, "job.status", job=job_summary(job))
        if new in FINISHED_JOB_STATUSES:  # however a job ends, its files leave its phones
            dispatch.clean_phones_on_commit(job.pk)
    return bool(updated)


def mark_running(job: Job) -> bool:
    return _set_status(job, JobStatus.RUNNING, allowed_from=(JobStatus.QUEUED,), started_at=timezone.now())


def pause_job(job: Job, by: AbstractBaseUser) -> None:
    with transaction.atomic():
        if not _set_status(job, JobStatus.PAUSED, allowed_from=(JobStatus.QUEUED, JobStatus.RUNNING)):
            raise JobActionError(f"a {job.status} job cannot be paused")
        log(job.pk, f"paused by {by.get_username()}: the current round finishes, no new round starts")


def resume_job(job: Job, by: AbstractBaseUser) -> None:

    with transaction.atomic():
        if not _set_status(job, JobStatus.RUNNING, allowed_from=(JobStatus.PAUSED,)):
            raise JobActionError(f"a {job.status} job cannot be resumed")
        log(job.pk, f"resumed by {by.get_username()}")
        dispatch.start_round_on_commit(job.pk)


def cancel_job(job: Job, by: AbstractBaseUser) -> None:
    with transaction.atomic():
        active = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
        if not _set_status(job, JobStatus.CANCELLED, allowed_from=active, finished_at=timezone.now()):
            raise JobActionError(f"a {job.status} job cannot be cancelled")
        log(job.pk, f"cancelled by {by.get_username()}", level=LogLevel.WARNING)
        # Work in flight stops counting, and phones still running are told to stop through their
        # runtime; they keep their lease until their run ends (leases.release_idle).
        running = list(  # phones only: a simulated client's batch sees the round closed and stops recording
            ClientResult.objects.filter(
                leases.live_run_filter(), job=job, device__isnull=False
            ).select_related("device")
        )
        ClientResult.objects.filter(job=job, state__in=IN_FLIGHT_STATES).update(
            state=ClientState.DROPPED, reason="the job was cancelled"
        )
        Round.objects.filter(job=job, status__in=OPEN_ROUND_STATUSES).update(
            status=RoundStatus.ABANDONED, finished_at=timezone.now(), reason="the job was cancelled"
        )
        leases.release_job(job.pk)
        for result in running:
            dispatch.cancel_client_on_commit(result)


def pause_for_operator(job: Job, why: str) -> None:
    """The engine stops a job that cannot make progress, keeping everything so a person can resume it."""
    if _set_status(job, JobStatus.PAUSED, allowed_from=(JobStatus.RUNNING,)):
        log(job.pk, f"paused: {why}", level=LogLevel.ERROR)


def complete_job(job: Job) -> None:
    if _set_status(job, JobStatus.COMPLETED, allowed_from=(JobStatus.RUNNING,), finished_at=timezone.now()):
        headline = job.headline
        log(job.pk, f"completed {job.committed_rounds} rounds; final {headline['label']} {headline['text']}")
        dispatch.export_onnx_on_commit(job.pk)  # the final model as ONNX beside its safetensors


def fail_job(job: Job, error: str) -> None:
    active = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
    if _set_status(
        job, JobStatus.FAILED, allowed_from=active, finished_at=timezone.now(), error=error[:2000]
    ):
        log(job.pk, f"failed: {error}", level=LogLevel.ERROR)


# --- excluding phones (client influence, ALGORITHMS.md §5) -------------------------------------------
EXCLUDABLE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


def _who(by: AbstractBaseUser | None, auto: bool) -> str:
    return "automatically" if auto or by is None else f"by {by.get_username()}"


def exclude_participant(
    job: Job,
    participant: Participant,
    *,
    reason: str,
    round_number: int | None = None,
    by: AbstractBaseUser | None = None,
    auto: bool = False,
) -> bool:
    """Stop selecting a phone for this job from the next round on; recorded (Exclusion row and the
    participant's current-exclusion fields), logged and announced. False if it was excluded already."""
    if job.status not in EXCLUDABLE_STATUSES:
        raise JobActionError(f"a {job.status} job's phones cannot be excluded")
    after = job.committed_rounds if round_number is None else round_number
    with transaction.atomic():
        if not auto:  # the automatic rule keeps its own floor; a person is stopped from stalling the job
            needed = parse_job_config(job.config).min_reports
            remaining = job.participants.filter(excluded=False).exclude(pk=participant.pk).count()
            if remaining < needed:
                raise JobActionError(
                    f"excluding {participant.device.name} would leave {remaining} phones, fewer than the "
                    f"{needed} a round needs"
                )
        updated = Participant.objects.filter(pk=participant.pk, excluded=False).update(
            excluded=True,
            excluded_reason=reason[:200],
            excluded_at=timezone.now(),
            excluded_round=after,
            excluded_by=by,
            excluded_auto=auto,
        )
        if not updated:
            return False
        exclusion = Exclusion.objects.create(
            job=job,
            participant=participant,
            action=ExclusionAction.EXCLUDE,
            round_number=after,
            reason=reason[:200],
            by=by,
            auto=auto,
        )
        log(
            job.pk,
            f"{participant.device.name} excluded {_who(by, auto)} after round {after}: {reason}",
            level=LogLevel.WARNING,
            round_number=after or None,
        )
        send_job_event(job.pk, "job.exclusion", exclusion=exclusion.snapshot())
    return True


def include_participant(
    job: Job, participant: Participant, *, by: AbstractBaseUser, reason: str = ""
) -> bool:
    """Put an excluded phone back into selection. An operator's decision: the automatic rule leaves a
    phone that a person put back alone. False if it was not excluded."""
    if job.status not in EXCLUDABLE_STATUSES:
        raise JobActionError(f"a {job.status} job's phones cannot be included again")
    reason = reason or "included again by an operator"
    with transaction.atomic():
        if not Participant.objects.filter(pk=participant.pk, excluded=True).update(
            excluded=False,
            excluded_reason="",
            excluded_at=None,
            excluded_round=None,
            excluded_by=None,
            excluded_auto=False,
        ):
            return False
        exclusion = Exclusion.objects.create(
            job=job,
            participant=participant,
            action=ExclusionAction.INCLUDE,
            round_number=job.committed_rounds,
            reason=reason[:200],
            by=by,
        )
        log(
            job.pk,
            f"{participant.device.name} included again {_who(by, False)} after round {job.committed_rounds}",
            round_number=job.committed_rounds or None,
        )
        send_job_event(job.pk, "job.exclusion", exclusion=exclusion.snapshot())
    return True


def job_snapshot(job: Job) -> dict[str, Any]:
    """Everything a dashboard needs to draw itself; events after it are applied on top."""
    rounds = list(job.rounds.order_by("number", "attempt"))
    current = next(
        (r for r in reversed(rounds) if r.status not in (RoundStatus.COMMITTED, RoundStatus.ABANDONED)), None
    )
    shown = current or (rounds[-1] if rounds else None)
    clients = (
        [
            c.snapshot()
            for c in shown.client_results.select_related("device", "round").order_by("device__name")
        ]
        if shown
        else []
    )
    participants = [
        {
            "device": p.device_id,
            "device_name": p.display_name,
            "client_index": p.client_index,
            "num_samples": p.num_samples,
            "label_counts": p.label_counts,
            "rounds_reported": p.rounds_reported,
            "last_round": p.last_round,
            "excluded": p.excluded,
            "excluded_reason": p.excluded_reason,
            "excluded_round": p.excluded_round,
            "excluded_auto": p.excluded_auto,
            # Which data it trained on (a pushed shard, or its own files on the phone), and whether the
            # server knows how many samples that was (a phone-resident job may withhold it).
            "data_source": p.data_source,
            "samples_known": bool(p.shard_sha256)
            or p.device_id is None
            or "reported by the phone" in p.data_source,
        }
        for p in job.participants.select_related("device")
    ]
    return {
        "job": job_summary(job),
        "rounds": [r.snapshot() for r in rounds],
        "current_round": current.snapshot() if current else None,
        "clients": clients,
        "participants": participants,
        "log": [e.snapshot() for e in job.log_entries.all()[:200]],
    }


def export_rows(job: Job) -> list[dict[str, Any]]:
    """One row per committed round: what the CSV/JSON exports contain."""
    rows = []
    for r in job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number"):
        reported = r.client_results.filter(state="reported").count()
        rows.append(
            {
                "round": r.number,
                "attempt": r.attempt,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "reported": reported,
                "select_s": r.select_s,
                "push_s": r.push_s,
                "train_s": r.train_s,
                "pull_s": r.pull_s,
                "aggregate_s": r.aggregate_s,
                "wall_s": r.wall_s,
                "bytes_down": r.bytes_down,
                "bytes_up": r.bytes_up,
            }
        )
    return rows


def final_model_path(job: Job) -> Path | None:
    if not job.committed_rounds:
        return None
    path = storage.model_export_path(job.pk, job.committed_rounds)
    return path if path.exists() else None


__all__ = [
    "ClientResult",
    "JobActionError",
    "Participant",
    "Round",
    "cancel_job",
    "create_job",
    "exclude_participant",
    "export_rows",
    "final_model_path",
    "job_snapshot",
    "job_summary",
    "include_participant",
    "log",
    "pause_job",
    "resume_job",
]
