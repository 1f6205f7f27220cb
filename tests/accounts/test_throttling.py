"""Login throttling through Django's test client against the real views: the login page, the admin
login and API tokens. After AXES_FAILURE_LIMIT (5) failures in a row an account+address is refused
with 429 and a reason, even with the right password, until the cool-off has passed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from accounts.throttling import TOKEN_ACCOUNT, client_ip

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
RIGHT = "pw-for-tests-1"
LIMIT = 5


def attempt(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def test_thirty_wrong_passwords_are_not_all_answered_normally(client: Client, viewer_user: Any) -> None:
    answers = [attempt(client, "vera", f"wrong-{i}") for i in range(30)]
    codes = [answer.status_code for answer in answers]
    # The first four are ordinary "wrong password" pages; from the fifth on, a lockout.
    assert codes == [200] * (LIMIT - 1) + [429] * (30 - LIMIT + 1)
    assert b"correct username and password" in answers[0].content
    locked = answers[LIMIT - 1]
    text = locked.content.decode()
    assert "Too many failed logins for “vera” from your address: locked out for 15 minutes" in text
    assert 'id="lockout"' in text and 'name="password"' in text  # still the login page, with the reason
    assert int(locked["Retry-After"]) == 15 * 60
    # The right password is refused too while the lockout lasts, and no session is opened.
    right = attempt(client, "vera", RIGHT)
    assert right.status_code == 429
    assert client.get(reverse("devices:fleet")).status_code == 302


def test_lockout_is_per_account_and_address(client: Client, viewer_user: Any, operator_user: Any) -> None:
    for i in range(LIMIT):
        attempt(client, "vera", f"wrong-{i}")
    assert attempt(client, "vera", RIGHT).status_code == 429
    # Another account from the same address, and the same account from elsewhere, still log in.
    assert attempt(Client(), "opal", RIGHT).status_code == 302
    assert attempt(Client(REMOTE_ADDR="10.1.2.3"), "vera", RIGHT).status_code == 302
    # A forged X-Forwarded-For is the client's own words (no proxy is configured): still locked out.
    assert attempt(Client(), "vera", RIGHT, HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429


def test_lockout_ends_after_the_cool_off(client: Client, viewer_user: Any) -> None:
    for i in range(LIMIT):
        attempt(client, "vera", f"wrong-{i}")
    assert attempt(client, "vera", RIGHT).status_code == 429
    # Move the recorded failures 16 minutes into the past: the 15-minute lockout is over.
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))
    assert attempt(client, "vera", RIGHT).status_code == 302


def test_a_successful_login_starts_the_count_again(client: Client, viewer_user: Any) -> None:
    for i in range(LIMIT - 1):
        assert attempt(client, "vera", f"wrong-{i}").status_code == 200
    assert attempt(client, "vera", RIGHT).status_code == 302
    client.post(reverse("accounts:logout"))
    for i in range(LIMIT - 1):
        assert attempt(client, "vera", f"again-{i}").status_code == 200
    assert attempt(client, "vera", RIGHT).status_code == 302


def test_admin_login_is_throttled(client: Client) -> None:
    get_user_model().objects.create_superuser("root", password="root-pass-123")
    url = "/admin/login/?next=/admin/"
    codes = [client.post(url, {"username": "root", "password": f"no-{i}"}).status_code for i in range(8)]
    assert codes == [200] * (LIMIT - 1) + [429] * (8 - LIMIT + 1)
    locked = client.post(url, {"username": "root", "password": "root-pass-123"})
    assert locked.status_code == 429 and "Too many failed logins for “root”" in locked.content.decode()
    assert client.get("/admin/").status_code == 302  # not logged in


def test_wrong_api_tokens_are_throttled(viewer_user: Any) -> None:
    token = Token.objects.create(user=viewer_user)
    guesser = Client(REMOTE_ADDR="198.51.100.7")
    answers = [
        guesser.get("/api/devices/", HTTP_AUTHORIZATION=f"Token {'0' * 39}{i % 10}") for i in range(10)
    ]
    assert [a.status_code for a in answers] == [401] * (LIMIT - 1) + [429] * (10 - LIMIT + 1)
    locked = answers[LIMIT - 1].json()
    assert "Too many failed logins" in locked["detail"] and answers[LIMIT - 1]["Retry-After"] == "900"
    assert "Too many failed logins" in answers[-1].json()["detail"]
    # Locked out from that address even with a real token; the token still works from elsewhere.
    assert guesser.get("/api/devices/", HTTP_AUTHORIZATION=f"Token {token.key}").status_code == 429
    assert Client().get("/api/devices/", HTTP_AUTHORIZATION=f"Token {token.key}").status_code == 200
    assert AccessAttempt.objects.get(ip_address="198.51.100.7").username == TOKEN_ACCOUNT


def test_a_good_token_is_not_counted(viewer_user: Any) -> None:
    token = Token.objects.create(user=viewer_user)
    api = Client()
    for _ in range(LIMIT + 2):
        assert api.get("/api/devices/", HTTP_AUTHORIZATION=f"Token {token.key}").status_code == 200
    assert not AccessAttempt.objects.exists()


def test_no_real_account_can_share_the_token_counter() -> None:
    # Failed tokens are counted under TOKEN_ACCOUNT, a name Django's username validator refuses.
    with pytest.raises(ValidationError):
        UnicodeUsernameValidator()(TOKEN_ACCOUNT)


class _Request:
    def __init__(self, meta: dict[str, str]) -> None:
        self.META = meta


@pytest.mark.parametrize(
    ("proxies", "meta", "expected"),
    [
        (0, {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "203.0.113.5"}, "192.0.2.1"),
        (1, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.5"}, "203.0.113.5"),
        # A client's own forged entry sits left of what our proxy appended: it is not believed.
        (1, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 203.0.113.5"}, "203.0.113.5"),
        (2, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.5"}, "10.0.0.1"),
    ],
)
def test_client_ip_believes_only_configured_proxies(
    settings: Any, proxies: int, meta: dict[str, str], expected: str
) -> None:
    settings.PROXY_COUNT = proxies
    assert client_ip(_Request(meta)) == expected  # type: ignore[arg-type]
