"""Login throttling (django-axes): what a locked-out client sees, and which address it is counted under.

Axes counts failed logins per account *and* client address (settings.AXES_LOCKOUT_PARAMETERS); after
AXES_FAILURE_LIMIT failures in a row that pair is refused — even with the right password — for
AXES_COOLOFF_TIME. Every way in goes through it: the login page and the admin login (both call
`authenticate(request, ...)`), and API tokens (accounts.authentication counts wrong tokens under the
pseudo-account TOKEN_ACCOUNT). An administrator lifts a lockout early in the admin (Axes › Access
attempts) or with `manage.py axes_reset_username NAME`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

# Failed API tokens are counted as failures of this "account" (a space cannot occur in a Django username,
# so no real account shares its counter): a client guessing tokens is locked out like one guessing passwords.
TOKEN_ACCOUNT = "(api token)"  # noqa: S105 - a counter name, not a password
LOGIN_TEMPLATE = "accounts/login.html"


def client_ip(request: HttpRequest) -> str | None:
    """The address failures are counted under. With no proxy in front (FEDFLEET_PROXY_COUNT=0) it is the
    socket's peer: an X-Forwarded-For header is the client's own words, and believing it would let every
    guess come from a "new" address. Behind N proxies it is the entry the outermost proxy appended
    (N-th from the right); a header with fewer entries than proxies is a client bypassing them."""
    proxies = int(getattr(settings, "PROXY_COUNT", 0))
    peer = request.META.get("REMOTE_ADDR") or None
    if proxies == 0:
        return peer
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    return hops[-proxies] if len(hops) >= proxies else peer


def cool_off() -> dt.timedelta:
    value: dt.timedelta = settings.AXES_COOLOFF_TIME  # a timedelta in config/settings.py
    return value


def lockout_message(username: str | None) -> str:
    minutes = max(1, round(cool_off().total_seconds() / 60))
    who = f"“{username}”" if username else "this account"
    return (
        f"Too many failed logins for {who} from your address: locked out for {minutes} minute"
        f"{'s' if minutes != 1 else ''}. Try again later, or ask an administrator to unlock it."
    )


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.META.get("HTTP_ACCEPT", "")


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """settings.AXES_LOCKOUT_CALLABLE: 429 with a reason — JSON for the API, the login page otherwise.

    Axes calls it as (request, original_response, credentials) from its sync middleware and as
    (request, credentials) from its async one, so the extra arguments are not relied on."""
    username = _posted_username(request)
    message = lockout_message(None if username == TOKEN_ACCOUNT else username)
    retry_after = str(int(cool_off().total_seconds()))
    if _wants_json(request):
        response: HttpResponse = JsonResponse({"detail": message}, status=429)
    else:
        form = AuthenticationForm(request, initial={"username": username or ""})
        context = {"form": form, "lockout_message": message, "next": request.POST.get("next", "")}
        response = render(request, LOGIN_TEMPLATE, context, status=429)
    response["Retry-After"] = retry_after
    return response


def _posted_username(request: HttpRequest) -> str | None:
    credentials = getattr(request, "axes_credentials", None) or {}
    username = credentials.get("username") if isinstance(credentials, dict) else None
    if username is None and request.method == "POST":
        username = request.POST.get("username")
    return str(username)[:150] if username else None
