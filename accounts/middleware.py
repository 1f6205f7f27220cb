"""Login required by default: a view is open to anonymous users only if it says so (login_not_required).

This is Django's LoginRequiredMiddleware with one change: endpoints that answer JSON (marked with
`accounts.decorators.json_endpoint`) get a 401 JSON body instead of a redirect to the login page, which a
fetch() in a page could not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.http import HttpRequest, HttpResponse, JsonResponse


class LoginRequiredByDefaultMiddleware(LoginRequiredMiddleware):
    def handle_no_permission(self, request: HttpRequest, view_func: Callable[..., Any]) -> HttpResponse:
        if getattr(view_func, "answers_json", False):
            return JsonResponse({"error": "authentication required"}, status=401)
        return super().handle_no_permission(request, view_func)
