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


def agent_environment(
    base: dict[str, str], *, slowdown: float, behaviour: str, serial: str, home: Path
) -> dict[str, str]:
    """The child's environment: the host's, single-threaded maths (many phones share two cores), and
    what the agent reads about its phone."""
    env = dict(base)
    env.update(
        {
            "FEDFLEET_SLOWDOWN": repr(float(slowdown)),
            "FEDFLEET_BEHAVIOUR": behaviour,
            "FEDFLEET_PHONE_SERIAL": serial,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "TORCH_NUM_THREADS": "1",
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
