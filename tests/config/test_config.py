"""Environment helpers, the dev secret key, the websocket route collector and the plotly.js finder."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.core.exceptions import ImproperlyConfigured

from config.dev_secret import load_or_create_dev_secret_key
from config.env import env_bool, env_int, env_list, env_path, env_str
from config.routing import collect_websocket_urlpatterns


def test_env_helpers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("X_STR", " value ")
    monkeypatch.setenv("X_EMPTY", "")
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_LIST", "a, b,,c ")
    monkeypatch.setenv("X_PATH", str(tmp_path / "sub" / ".." / "d"))
    assert env_str("X_STR", "d") == "value"
    assert env_str("X_EMPTY", "default") == "default"
    assert env_str("X_MISSING", "default") == "default"
    assert env_bool("X_BOOL", False) is True and env_bool("X_MISSING", True) is True
    assert env_int("X_INT", 1) == 42
    assert env_list("X_LIST", []) == ["a", "b", "c"]
    assert env_path("X_PATH", Path("/nope")) == tmp_path / "d"


@pytest.mark.parametrize(
    ("name", "value", "call"),
    [
        ("X_BOOL", "maybe", lambda: env_bool("X_BOOL", False)),
        ("X_INT", "ten", lambda: env_int("X_INT", 1)),
        ("X_INT", "0", lambda: env_int("X_INT", 1, minimum=1)),
    ],
)
def test_env_helpers_refuse_malformed_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, call
) -> None:  # noqa: ANN001
    monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=name):
        call()


def test_dev_secret_key_is_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "dev-secret-key"
    first = load_or_create_dev_secret_key(path)
    assert len(first) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_dev_secret_key(path) == first


def test_settings_use_sqlite_wal_and_immediate_transactions() -> None:
    from config.settings import SQLITE_OPTIONS

    assert "journal_mode=WAL" in SQLITE_OPTIONS["init_command"]
    assert SQLITE_OPTIONS["transaction_mode"] == "IMMEDIATE" and SQLITE_OPTIONS["timeout"] == 20


def test_settings_without_debug_require_a_secret_key(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(DJANGO_DEBUG="0", FEDFLEET_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    code = "import django; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set" in result.stderr
    env["DJANGO_SECRET_KEY"] = "x" * 60
    env["DATABASE_URL"] = "postgres://u:p@db.example:5432/fedfleet"
    code = "import django; django.setup(); from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], s.DEBUG)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["django.db.backends.postgresql", "False"], result.stderr


def test_websocket_routes_collected_from_apps() -> None:
    routes = [str(pattern.pattern) for pattern in collect_websocket_urlpatterns()]
    assert "ws/fleet/" in routes
    assert collect_websocket_urlpatterns(["no_such_app.routing"]) == []


def test_plotly_js_is_served_from_the_installed_package() -> None:
    found = finders.find("vendor/plotly.min.js")
    assert found and Path(found).stat().st_size > 1_000_000
    assert finders.find("vendor/other.js") is None


def test_plotly_js_served_over_http(client, viewer_user) -> None:  # noqa: ANN001
    # WhiteNoise answers before the login middleware: static files need no session.
    from django.test import Client

    response = Client().get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript") or "javascript" in response["Content-Type"]
