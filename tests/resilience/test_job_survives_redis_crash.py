"""A running job survives its broker: Redis is SIGKILLed mid-round and started again on the same port and
data dir, under real workers, beat and virtual phones. The workers reconnect, beat's watchdog re-drives
what the outage lost, and the job completes with every round committed once and no phone left busy."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from devices.models import Device, DeviceStatus
from tests.conftest import (
    ManagedProcess,
    VirtualLab,
    _point_celery_at,
    _point_channels_at,
    _start_worker,
    _wait_for_log,
    start_process,
    wait_until,
)
from tests.resilience.conftest import CrashableRedis
from tests.training.test_crash_proof_integration import assert_one_agent_per_phone
from tests.training.test_engine_integration import committed_numbers, launch, register, wait_for_job
from training.models import ClientResult, ClientState, JobStatus, Round, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED)


@pytest.fixture
def lab_on_crashable_redis(
    crashable_redis: CrashableRedis, subprocess_env: dict[str, str], redis_server: str, tmp_path: Path
) -> Iterator[dict[str, ManagedProcess]]:
    """Both workers and beat on a Redis of this test's own; this process publishes there too."""
    env = {**subprocess_env, "REDIS_URL": crashable_redis.url}
    url = crashable_redis.url
    _point_celery_at(url, url)
    _point_channels_at(
        {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}]},
            }
        }
    )
    procs: dict[str, ManagedProcess] = {}
    try:
        procs["devices"] = _start_worker("crash-devices", "devices", "threads", 8, env, tmp_path)
        procs["training"] = _start_worker("crash-training", "training", "prefork", 2, env, tmp_path)
        beat = [
            str(BIN / "celery"),
            "-A",
            "config",
            "beat",
            "-s",
            str(tmp_path / "beat-schedule"),
            "-l",
            "INFO",
        ]
        procs["beat"] = start_process("crash-beat", beat, env, tmp_path)
        _wait_for_log(procs["beat"], "beat: Starting")
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
        _point_celery_at(redis_server, redis_server)
        django_settings.REDIS_URL = redis_server
        _point_channels_at(
            {
                "default": {
                    "BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [{"address": redis_server, "socket_timeout": None}]},
                }
            }
        )


def test_a_job_survives_redis_killed_and_restarted_mid_round(
    crashable_redis: CrashableRedis,
    lab_on_crashable_redis: dict[str, ManagedProcess],
    virtual_phones: Callable[..., VirtualLab],
) -> None:
    register(virtual_phones(4, seed=131), "redis-crash")
    job = launch("redis-crash", rounds=4, round_deadline_s=10, local_epochs=3)
    wait_until(
        lambda: (
            Round.objects.filter(job=job, number=2, status=RoundStatus.TRAINING).exists()
            and ClientResult.objects.filter(job=job, round__number=2, state=ClientState.TRAINING).exists()
        ),
        timeout_s=180,
        interval_s=0.02,
        what="round 2 to be training",
    )
    crashable_redis.crash()  # SIGKILL mid-round: queued and unacknowledged messages only in its AOF
    crashable_redis.restart()
    job = wait_for_job(job, FINISHED, tick=lambda: assert_one_agent_per_phone(job.pk))
    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2, 3, 4]  # none lost, none counted twice
    for name, proc in lab_on_crashable_redis.items():
        assert proc.process.poll() is None, f"{name} died:\n{proc.log()[-3000:]}"
    wait_until(
        lambda: not Device.objects.filter(status=DeviceStatus.BUSY).exists(),
        timeout_s=60,
        what="every phone to be free",
    )
