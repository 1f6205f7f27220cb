"""A Redis the test may crash: SIGKILL it and start it again on the same port and data dir, as a broker
that crashed (or was upgraded) and came back would be. Each test gets its own server, never the session's
shared one, so killing it disturbs no other test."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from config.local_redis import LocalRedis, start_local_redis


@dataclass
class CrashableRedis:
    server: LocalRedis

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def crash(self) -> None:
        """SIGKILL: no shutdown save, no final fsync — whatever survives is what the AOF already held."""
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def restart(self) -> None:
        self.server = start_local_redis(self.server.data_dir, self.server.port)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture
def crashable_redis(tmp_path: Path) -> Iterator[CrashableRedis]:
    server = CrashableRedis(start_local_redis(tmp_path / "redis"))
    yield server
    server.server.stop()
