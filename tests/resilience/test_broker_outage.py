"""A Celery worker survives a Redis crash: Redis is SIGKILLed while the worker runs a task and is started
again on the same port and data dir. The worker must reconnect, run new tasks, and acknowledge the task it
was running when it finishes; a task whose worker died meanwhile is delivered again, not lost.

Without config/broker.py the worker died here (celery 5.7.0, kombu 5.7.0) with `Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")` — see that module for why.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.conftest import ManagedProcess, start_process, wait_until
from tests.resilience.conftest import CrashableRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
HOLD = "tests.resilience.hold"
STARTUP_S = 90.0
# kombu's Redis transport keeps taken-but-unacknowledged messages here until they are acknowledged.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def worker_env(redis_url: str, work: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "FEDFLEET_DATA_DIR"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="1",
        REDIS_URL=redis_url,
        FEDFLEET_DATA_DIR=str(work / "data"),
        DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_worker(name: str, pool: str, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    """A worker as `make demo` runs one (gossip, mingle and heartbeats on), plus the holding task."""
    argv = [
        str(BIN / "celery"), "-A", "config", "worker", "-Q", "devices", "-P", pool, "-c", "2",
        "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--include", "tests.resilience.holding_tasks", "-l", "INFO",
    ]  # fmt: skip
    worker = start_process(name, argv, env, log_dir)
    wait_for_log(worker, " ready.", count=1)
    return worker


def wait_for_log(worker: ManagedProcess, marker: str, *, count: int, timeout_s: float = STARTUP_S) -> None:
    def seen() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(
                f"{worker.name} exited with {worker.process.returncode}:\n{worker.log()[-6000:]}"
            )
        return worker.log().count(marker) >= count

    wait_until(seen, timeout_s=timeout_s, interval_s=0.1, what=f"{worker.name} to log {marker!r} x{count}")


class Markers:
    """The holding task's files: starts per token (one per delivery) and completions."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def starts(self, token: str) -> int:
        return len(list(self.directory.glob(f"{token}.started.*")))

    def done(self, token: str) -> bool:
        return (self.directory / f"{token}.done").exists()

    def release(self, token: str) -> None:
        (self.directory / f"{token}.release").write_text("")


@pytest.fixture
def markers(tmp_path: Path) -> Markers:
    directory = tmp_path / "markers"
    directory.mkdir()
    return Markers(directory)


@pytest.fixture
def client(crashable_redis: CrashableRedis) -> Iterator[Celery]:
    """A producer of our own: the session's config.celery app points at an in-memory broker."""
    app = Celery("resilience-client", broker=crashable_redis.url, set_as_current=False)
    yield app
    app.close()


def send_hold(client: Celery, markers: Markers, token: str) -> None:
    client.send_task(HOLD, args=[str(markers.directory), token], queue="devices")


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_survives_a_redis_crash_mid_task_and_reconnects(
    pool: str, crashable_redis: CrashableRedis, client: Celery, markers: Markers, tmp_path: Path
) -> None:
    worker = start_worker(f"worker-{pool}", pool, worker_env(crashable_redis.url, tmp_path), tmp_path)
    try:
        send_hold(client, markers, "long")
        wait_until(lambda: markers.starts("long") == 1, timeout_s=30, what="the long task to start")
        redis = crashable_redis.client()
        assert redis.hlen(UNACKED) == 1  # taken, not acknowledged (acks_late)
        redis.close()

        crashable_redis.crash()
        wait_for_log(worker, "Connection to broker lost", count=1, timeout_s=30)
        crashable_redis.restart()
        redis = crashable_redis.client()
        assert redis.hlen(UNACKED) == 1, "the unacknowledged task did not survive the Redis crash"

        wait_for_log(worker, "Connected to redis://", count=2)  # the first connection, then the reconnect
        markers.release("short")
        send_hold(client, markers, "short")
        try:
            wait_until(
                lambda: markers.done("short"), timeout_s=60, what="a task sent after the restart to run"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.log()[-8000:]}") from None

        markers.release("long")
        wait_until(lambda: markers.done("long"), timeout_s=30, what="the long task to finish")
        # Its acknowledgement reached the restarted Redis: it will not be delivered again.
        wait_until(lambda: redis.hlen(UNACKED) == 0, timeout_s=30, what="the long task's ack")
        redis.close()
        assert markers.starts("long") == 1  # ran once, never redelivered while it ran
        assert worker.process.poll() is None, worker.log()[-6000:]
        assert "Unrecoverable error" not in worker.log()
    finally:
        worker.stop()


def test_a_task_whose_worker_died_in_the_outage_is_delivered_again(
    crashable_redis: CrashableRedis, client: Celery, markers: Markers, tmp_path: Path
) -> None:
    # A visibility timeout of seconds instead of 26 h, to see the redelivery within the test.
    visibility_s = 3
    env = worker_env(crashable_redis.url, tmp_path, FEDFLEET_BROKER_VISIBILITY_TIMEOUT_S=str(visibility_s))
    first = start_worker("worker-first", "threads", env, tmp_path)
    try:
        send_hold(client, markers, "orphan")
        wait_until(lambda: markers.starts("orphan") == 1, timeout_s=30, what="the task to start")
        crashable_redis.crash()
        first.process.send_signal(signal.SIGKILL)  # dies while Redis is down: nobody can restore its task
        first.process.wait(timeout=10)
    finally:
        first.stop()

    crashable_redis.restart()
    redis = crashable_redis.client()
    assert redis.hlen(UNACKED) == 1
    [(_, taken_at)] = redis.zrange(UNACKED_INDEX, 0, -1, withscores=True)
    # Redelivered once the message is older than the visibility timeout (the worker checks as it starts).
    wait_until(
        lambda: time.time() > taken_at + visibility_s + 1, timeout_s=visibility_s + 5, what="the timeout"
    )
    markers.release("orphan")
    second = start_worker("worker-second", "threads", env, tmp_path)
    try:
        wait_until(lambda: markers.done("orphan"), timeout_s=60, what="the orphaned task to run again")
        assert markers.starts("orphan") == 2
        wait_until(lambda: redis.hlen(UNACKED) == 0, timeout_s=30, what="its ack")
    finally:
        redis.close()
        second.stop()
