"""Plugging the analyses into the round engine: a round_committed receiver that enqueues them.

Connected in TrainingConfig.ready(). The receiver runs in the committing worker right after the commit,
so it only reads the job's config and enqueues `training.tasks.analyse_rounds` (training queue).
"""

from __future__ import annotations

from typing import Any

from training.analysis.influence import should_analyse
from training.jobs import dispatch
from training.models import Job


def enqueue_round_analysis(sender: Any, *, round_id: int, job_id: int, **kwargs: Any) -> None:
    config = Job.objects.filter(pk=job_id).values_list("config", flat=True).first()
    if config is not None and should_analyse(config):
        dispatch.analyse_rounds(job_id)
