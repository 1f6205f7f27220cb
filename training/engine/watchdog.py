"""The watchdog (beat): re-drives jobs whose tasks were lost — a restarted Redis or a dead worker."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from training.engine.rounds import open_round
from training.jobs import dispatch
from training.models import (
    Job,
    JobStatus,
)

log = logging.getLogger(__name__)

# Seconds after a round's deadline before the watchdog assumes the deadline task was lost.
DEADLINE_GRACE_S = 15.0


def watchdog() -> None:
    """Re-drive running jobs whose tasks were lost: a restarted Redis or worker resumes them here."""

    now = timezone.now()
    for job in Job.objects.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING)):
        if job.status == JobStatus.QUEUED:
            if now - job.created_at > timedelta(seconds=30):
                dispatch.start_job(job.pk)
            continue
        rnd = open_round(job)
        if rnd is None:
            dispatch.start_round(job.pk)
        elif now > rnd.deadline_at + timedelta(seconds=DEADLINE_GRACE_S):
            dispatch.close_round(rnd.pk, at_deadline=True)
