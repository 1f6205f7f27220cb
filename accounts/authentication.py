"""API token authentication with the login throttle: wrong tokens count like wrong passwords.

DRF's TokenAuthentication looks the key up without calling `authenticate()`, so Axes never hears of a
bad token. Here a failure is reported to Axes (the `user_login_failed` signal, under the pseudo-account
accounts.throttling.TOKEN_ACCOUNT and the client's address), and a client past the limit is refused
with 429 before its token is even looked up — a right token too, until the lockout ends.
"""

from __future__ import annotations

from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.signals import user_login_failed
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request

from accounts.throttling import TOKEN_ACCOUNT, cool_off, lockout_message

CREDENTIALS = {"username": TOKEN_ACCOUNT}


class ThrottledTokenAuthentication(TokenAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        words = get_authorization_header(request).split()
        if not words or words[0].lower() != self.keyword.lower().encode():
            return None  # no token offered: other authenticators (session) decide
        django_request = request._request
        if not AxesProxyHandler.is_allowed(django_request, CREDENTIALS):
            raise Throttled(wait=cool_off().total_seconds(), detail=lockout_message(None))
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            user_login_failed.send(sender=type(self), credentials=dict(CREDENTIALS), request=django_request)
            raise
