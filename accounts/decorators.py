"""View decorators for the two roles: any logged-in user may look, operators may change things."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse

from accounts.roles import is_operator

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])


def json_endpoint(view: ViewFunc) -> ViewFunc:
    """Mark a view as answering JSON, so that auth failures answer JSON too (401/403), not a redirect."""
    view.answers_json = True  # type: ignore[attr-defined]
    return view


def operator_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """403 unless the user holds the operator permission (login itself is enforced by the middleware)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_operator(request.user):
            if getattr(view, "answers_json", False):
                return JsonResponse({"error": "operator permission required"}, status=403)
            raise PermissionDenied("Only operators can do this.")
        return view(request, *args, **kwargs)

    return wrapper
