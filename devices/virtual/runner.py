"""Running the on-device agent: the phone's python command as a real child process.

`SubprocessRunner` starts the host interpreter afresh for each command (the plain, always-available path);
`devices.virtual.zygote.ZygoteRunner` forks it from a parent that has torch imported already. Both stream
the child's merged stdout/stderr as it is produced and return its exit status as a shell would (128+N for
a signal). Cancelling a run (connection dropped, phone offline) kills the child's whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

READ_CHUNK = 64 * 1024


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class AgentLaunch:
    args: list[str]  # what followed the python word, phone paths already mapped to host paths
    cwd: Path
    env: dict[str, str]


class ProgramRunner(Protocol):
    async def run(self, launch: AgentLaunch, out: Output) -> int: ...


def shell_status(returncode: int) -> int:
    """A Popen-style return code as `$?` shows it: -N (killed by signal N) becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# All a phone's agent gets from the host: finding programs, the locale and the time zone. Nothing else
# passes — the lab runs beside the platform (in docker-compose with DJANGO_SECRET_KEY, DATABASE_URL and
# REDIS_URL in its environment), and a phone runs whatever program it is sent.
HOST_PASSTHROUGH = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Single-threaded maths: many phones share the host's cores.
SINGLE_THREADED = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TORCH_NUM_THREADS": "1",
}


def host_environment(host: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of the host's environment, single-threaded maths added: what the zygote
    starts with (a forked child's /proc/self/environ still shows its parent's start-up environment) and
    the base of every agent's."""
    env = {name: host[name] for name in HOST_PASSTHROUGH if name in host}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(SINGLE_THREADED)
    return env


# Where a phone's programs record the host port behind each "loopback port" they listen on (phone.py,
# the tcp: service); training/agent/serve.py reads the same name (devices does not import training).
LOOPBACK_DIR_ENV = "FEDFLEET_LOOPBACK_DIR"


def agent_environment(
    host: Mapping[str, str],
    *,
    slowdown: float,
    behaviour: str,
    serial: str,
    home: Path,
    loopback_dir: Path | None = None,
) -> dict[str, str]:
    """The child's whole environment, built from an allowlist: host_environment(host), and what the
    agent reads about its phone (FEDFLEET_SLOWDOWN, FEDFLEET_BEHAVIOUR, FEDFLEET_PHONE_SERIAL, and the
    phone's loopback registry FEDFLEET_LOOPBACK_DIR)."""
    env = host_environment(host)
    if loopback_dir is not None:
        env[LOOPBACK_DIR_ENV] = str(loopback_dir)
    env.update(
        {
            "FEDFLEET_SLOWDOWN": repr(float(slowdown)),
            "FEDFLEET_BEHAVIOUR": behaviour,
            "FEDFLEET_PHONE_SERIAL": serial,
            "PYTHONUNBUFFERED": "1",  # output reaches the host line by line, as the platform relays it live
            "HOME": str(home),
            "TMPDIR": str(home / "data" / "local" / "tmp"),
        }
    )
    return env


class SubprocessRunner:
    def __init__(self, python: str = sys.executable) -> None:
        self._python = python

    async def run(self, launch: AgentLaunch, out: Output) -> int:
        process = await asyncio.create_subprocess_exec(
            self._python,
            *launch.args,
            cwd=launch.cwd,
            env=launch.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
        try:
            assert process.stdout is not None
            while chunk := await process.stdout.read(READ_CHUNK):
                await out.write(chunk)
            return shell_status(await process.wait())
        finally:
            if process.returncode is None:
                kill_group(process.pid)
                await process.wait()
