"""The `resident` runtime: phones whose shell can run Python (rooted phones, boards, virtual phones) keep
`agent.pyz serve` running between rounds, so a round pays for no interpreter start and no torch import.
The platform starts it itself through the shell — agent.pyz and the secret pushed to the work dir (the
secret as a 0600 file over ADB's sync service: never on a command line nor in an environment), then one
fixed command `nohup <python> agent.pyz serve ... > agent.log 2>&1 & echo $! > agent.pid` — and restarts
it when it died (the stream is refused: a stale pid is killed first) or knows another secret; an outdated
one is upgraded over the stream (agent_stream.py), and restarted with the current build when that fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import tempfile
from pathlib import Path

from devices import adb
from devices.models import Device
from devices.validators import agent_python_command
from training.agent import protocol
from training.engine.runtimes.agent_stream import (
    AGENT_WAIT_S,
    AgentRefusedSecret,
    AgentStreamRuntime,
    open_agent,
    up_to_date,
    wait_for_agent,
)
from training.engine.runtimes.base import ClientError
from training.engine.runtimes.exec_shell import agent_build, push_if_changed, remote_sha256
from training.jobs import storage

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 1 << 20


class AgentFiles:
    """Where the resident agent's files live on the phone (its work dir)."""

    def __init__(self, device: Device) -> None:
        self.work_dir = device.work_dir
        self.agent = storage.phone_agent_path(device.work_dir)
        self.secret = posixpath.join(device.work_dir, "agent.secret")
        self.pid = posixpath.join(device.work_dir, "agent.pid")
        self.log = posixpath.join(device.work_dir, "agent.log")


def start_command(device: Device, files: AgentFiles, old_pid: int | None) -> str:
    """The fixed template that (re)starts the agent; every argument quoted."""
    q = adb.quote
    kill = f"kill -9 {int(old_pid)} 2>/dev/null; " if old_pid is not None else ""
    return (
        f"{kill}nohup {agent_python_command(device.agent_python)} {q(files.agent)} serve "
        f"--port {int(device.agent_port)} --secret-file {q(files.secret)} --work-dir {q(files.work_dir)} "
        f"> {q(files.log)} 2>&1 & echo $! > {q(files.pid)}"
    )


def push_secret(conn: adb.AdbConnection, secret: str, remote: str) -> None:
    """The secret as a 0600 file (push keeps the local file's mode), from a private temporary file."""
    fd, name = tempfile.mkstemp(prefix="fedfleet-secret-")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
        conn.push(Path(name), remote)
    finally:
        os.unlink(name)


def recorded_pid(conn: adb.AdbConnection, files: AgentFiles) -> int | None:
    text = conn.shell(f"cat {adb.quote(files.pid)} 2>/dev/null", timeout_s=10, max_bytes=64).strip()
    return int(text) if text.isdigit() and 0 < len(text) <= 9 else None


def start_agent(conn: adb.AdbConnection, device: Device) -> None:
    files = AgentFiles(device)
    current = remote_sha256(conn, [files.agent, files.secret], make_dirs=[files.work_dir])
    build = agent_build()
    push_if_changed(conn, build.path, files.agent, build.sha256, current)
    secret_sha = hashlib.sha256((device.agent_secret + "\n").encode("ascii")).hexdigest()
    if current.get(files.secret) != secret_sha:
        push_secret(conn, device.agent_secret, files.secret)
    command = start_command(device, files, recorded_pid(conn, files))
    log.info("%s: starting agent serve on port %d", device, device.agent_port)
    conn.shell(command, timeout_s=30)


def log_tail(conn: adb.AdbConnection, device: Device) -> str:
    """The last words of the agent's log, for the reason a failed start gives."""
    try:
        text = conn.shell(f"cat {adb.quote(AgentFiles(device).log)} 2>/dev/null", max_bytes=LOG_TAIL_BYTES)
    except adb.AdbError:
        return "its log could not be read"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (" | ".join(lines[-3:]) or "its log is empty")[:200]


class ResidentRuntime(AgentStreamRuntime):
    name = "resident"

    def reach(self, conn: adb.AdbConnection, device: Device) -> protocol.AgentClient:
        try:
            client = open_agent(conn, device)
        except (adb.StreamRefused, AgentRefusedSecret):
            # Not running (never started, died, killed) — or running with a secret the phone no longer has.
            client = self._restart(conn, device)
        try:
            return up_to_date(conn, device, client)
        except ClientError as exc:
            if conn.closed:
                raise
            # An outdated agent that could not be upgraded over the stream (refused, did not take, did not
            # come back): the shell replaces it with the current build.
            log.warning(
                "%s: upgrading its agent over the stream failed (%s); restarting it", device, exc.reason()
            )
            client.close()
            return up_to_date(conn, device, self._restart(conn, device))

    @staticmethod
    def _restart(conn: adb.AdbConnection, device: Device) -> protocol.AgentClient:
        start_agent(conn, device)
        return wait_for_agent(
            conn, device, wait_s=AGENT_WAIT_S, why=lambda: log_tail(conn, device), restarting=True
        )
