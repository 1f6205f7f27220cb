"""Who may change a job: its owner and staff (with the operator role); every other user sees it read-only.

One rule, checked by the pages, the API and the job actions alike (pause, resume, cancel, exclude or
include a phone, run an analysis).
"""

from __future__ import annotations

from typing import Any

from accounts.roles import is_operator
from training.models import Job

REFUSAL = "only the job's owner or staff may change job #{pk}; other operators see it read-only"


def can_manage(user: Any, job: Job) -> bool:
    if not is_operator(user):
        return False
    return bool(user.is_staff or user.is_superuser or job.owner_id == user.pk)


def refusal(job: Job) -> str:
    return REFUSAL.format(pk=job.pk)
