"""Login throttling as deployed: Daphne serving the ASGI app (Axes' async middleware path), a real
browser-like client with cookies and CSRF, a PBKDF2 user in the shared test database."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.conftest import make_user

pytestmark = pytest.mark.integration

PASSWORD = "daphne-pass-1"  # noqa: S105 - a test fixture password


class Browser:
    """Cookies kept, redirects not followed: each answer is seen as it was sent."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect
        )

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        headers = {"Referer": self.base + path} if form is not None else {}
        try:
            with self.opener.open(
                urllib.request.Request(self.base + path, data, headers), timeout=30
            ) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log_in(self, username: str, password: str) -> tuple[int, str]:
        _, page = self.request("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page[:500]
        return self.request(
            "/accounts/login/", {"csrfmiddlewaretoken": token[1], "username": username, "password": password}
        )


def test_daphne_locks_out_after_five_wrong_passwords(transactional_db: None, daphne_server: str) -> None:
    make_user("daphne-op", OPERATORS, password=PASSWORD, for_subprocess=True)
    browser = Browser(daphne_server)
    codes = []
    for i in range(8):
        status, page = browser.log_in("daphne-op", f"wrong-{i}")
        codes.append(status)
    assert codes == [200, 200, 200, 200, 429, 429, 429, 429]
    assert "Too many failed logins for “daphne-op” from your address" in page
    status, page = browser.log_in("daphne-op", PASSWORD)
    assert status == 429, "the right password must wait for the lockout to end"
    assert browser.request("/devices/")[0] == 302  # still not logged in
    # Another account from the same address is not affected.
    make_user("daphne-other", OPERATORS, password=PASSWORD, for_subprocess=True)
    assert Browser(daphne_server).log_in("daphne-other", PASSWORD)[0] == 302
