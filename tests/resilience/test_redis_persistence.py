"""Redis as the project starts it (config/local_redis.py) keeps its data across a crash: a queued
message is still there after SIGKILL and a restart on the same data dir."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from config.local_redis import answers_ping, has_append_only_file, redis_server_argv, start_local_redis
from config.ports import free_port
from tests.conftest import wait_until
from tests.resilience.conftest import CrashableRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUEUE = Queue("resilience", Exchange("resilience"), routing_key="resilience")


def test_a_queued_message_survives_a_redis_crash(crashable_redis: CrashableRedis) -> None:
    with Connection(crashable_redis.url) as conn:
        conn.Producer().publish(
            {"task": "kept"}, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key, declare=[QUEUE]
        )
    # Killed the moment the publish was answered: nothing had time to fsync or snapshot.
    crashable_redis.crash()
    crashable_redis.restart()

    with Connection(crashable_redis.url) as conn, conn.SimpleQueue(QUEUE) as queue:
        message = queue.get(timeout=5)
        assert message.payload == {"task": "kept"}
        message.ack()
    client = crashable_redis.client()
    assert client.llen(QUEUE.name) == 0  # delivered once, then gone
    client.close()


def test_redis_persists_in_an_append_only_file_under_its_data_dir(crashable_redis: CrashableRedis) -> None:
    client = crashable_redis.client()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    assert has_append_only_file(crashable_redis.server.data_dir)
    client.close()


def test_a_data_dir_from_before_the_append_only_file_keeps_its_data(tmp_path: Path) -> None:
    """A data dir the old settings wrote (an RDB snapshot, no AOF) must not come back empty."""
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    port = free_port()
    old = subprocess.Popen(redis_server_argv(data_dir, port, append_only=False), stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers_ping(port), timeout_s=10, what="the old-style redis to answer")
        client = redis.Redis(port=port, socket_timeout=5)
        client.rpush("devices", "queued before the upgrade")
        client.save()
        client.close()
    finally:
        old.terminate()
        old.wait(timeout=10)
    assert not has_append_only_file(data_dir)

    server = CrashableRedis(start_local_redis(data_dir, port))
    try:
        assert has_append_only_file(data_dir)
        server.crash()  # the AOF, not the snapshot, must now hold the data
        (data_dir / "dump.rdb").unlink()
        server.restart()
        client = server.client()
        assert client.lrange("devices", 0, -1) == [b"queued before the upgrade"]
        client.close()
    finally:
        server.server.stop()
