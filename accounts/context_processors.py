"""Template context: the user's role, so the layout can show it and hide operator-only buttons."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from accounts.roles import is_operator, role_of


def _optional_url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


def role(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None:
        return {"user_role": "", "user_is_operator": False, "nav_jobs_url": None}
    return {
        "user_role": role_of(user),
        "user_is_operator": is_operator(user),
        # The Jobs link appears once the training app provides `training:job-list`.
        "nav_jobs_url": _optional_url("training:job-list"),
    }
