"""Celery tasks of the analyses (training queue): client influence after each round, exact leave-one-out
on demand. Their names stay `training.tasks.*` (explicit strings, so queued messages and routes keep
working); training/jobs/dispatch.py sends them by those names.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from training.analysis.influence import AnalysisBusy, analyse_job
from training.analysis.loo import run_exact_leave_one_out


@shared_task(name="training.tasks.analyse_rounds", bind=True, max_retries=120)
def analyse_rounds(self: Any, job_id: int) -> list[int]:
    """Client influence / attack success of every committed round not analysed yet (in order)."""
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
    run_exact_leave_one_out(run_id)
