"""Production settings: `manage.py check --deploy` passes with the defaults a deployment gets (DEBUG off,
a secret key from the environment), and the data dir and SQLite database are private (0700/0600)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from config.private_files import ensure_private_dir, ensure_private_file

REPO = Path(__file__).resolve().parents[2]
# What a deployment sets in the environment; everything else from the settings' defaults.
DEPLOYMENT_ONLY = ("DJANGO_", "FEDFLEET_", "DATABASE_URL", "REDIS_URL")


def production_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(DEPLOYMENT_ONLY)}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="fedfleet.example.org",
        FEDFLEET_DATA_DIR=str(data_dir),
        **extra,
    )
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_check_deploy_passes_under_production_settings(tmp_path: Path) -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_when_https_is_turned_off(tmp_path: Path) -> None:
    # The same check catches a deployment that turned HTTPS off: the test above is not vacuous.
    env = production_env(tmp_path / "data", FEDFLEET_HTTPS="0")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "security.W008" in result.stderr and "security.W012" in result.stderr


def test_production_https_settings_and_their_switches(tmp_path: Path) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"
    )

    def settings_under(**extra: str) -> str:
        env = production_env(tmp_path / "data", **extra)
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert settings_under() == "True True True 31536000 True None"
    assert settings_under(FEDFLEET_HSTS_SECONDS="3600", FEDFLEET_PROXY_COUNT="1") == (
        "True True True 3600 True ('HTTP_X_FORWARDED_PROTO', 'https')"
    )
    assert settings_under(FEDFLEET_HTTPS="0") == "False False False 0 True None"


def test_data_dir_and_database_are_created_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    # An ordinary umask (022) would make them 0755/0644; the platform must not rely on the caller's.
    env = production_env(data_dir)
    result = subprocess.run(
        [sys.executable, "-c", "import os; os.umask(0o022); import runpy; runpy.run_path('manage.py', run_name='__main__')",
         "migrate", "--noinput", "-v", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    database = data_dir / "db.sqlite3"
    assert mode(data_dir) == 0o700
    assert mode(database) == 0o600 and database.stat().st_size > 0  # migrated, so SQLite wrote to it
    for sidecar in (data_dir / "db.sqlite3-wal", data_dir / "db.sqlite3-shm"):
        if sidecar.exists():  # WAL files, while a connection keeps them, get the database's mode
            assert mode(sidecar) == 0o600


def test_an_existing_loose_data_dir_and_database_are_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # noqa: S103 - the loose mode an older install left
    database = data_dir / "db.sqlite3"
    database.write_bytes(b"")
    os.chmod(database, 0o644)
    ensure_private_dir(data_dir)
    ensure_private_file(database)
    assert mode(data_dir) == 0o700 and mode(database) == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_private_helpers_ignore_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        directory = ensure_private_dir(tmp_path / "a" / "b")
        file = ensure_private_file(directory / "db.sqlite3")
    finally:
        os.umask(previous)
    assert mode(directory) == 0o700 and mode(file) == 0o600
    assert file.read_bytes() == b""
