"""The lab's side of the zygote (see zygote_server.py): start it, hand it commands, stream their output.

Importing torch costs ~2 s per agent start; forking from a parent that imported it once costs
milliseconds. Behaviour over ADB is the same as `SubprocessRunner`'s: merged output streamed as produced,
the exit status as `$?`, a cancelled run kills the child's process group. Commands the zygote cannot run
as `python PROGRAM ARGS...` (interpreter options such as `-c`, `-m`, `-u`) and any run while the zygote is
unavailable take the plain path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

from devices.virtual.runner import (
    READ_CHUNK,
    AgentLaunch,
    Output,
    SubprocessRunner,
    host_environment,
    kill_group,
)

log = logging.getLogger(__name__)
SERVER_SCRIPT = Path(__file__).with_name("zygote_server.py")


class ZygoteUnavailable(RuntimeError):
    pass


class ZygoteRunner:
    def __init__(self, *, start_timeout_s: float = 120.0, env: dict[str, str] | None = None) -> None:
        self._fallback = SubprocessRunner()
        self._start_timeout_s = start_timeout_s
        self._env = env
        self._control: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._starting = asyncio.Lock()
        self._stopped = False
        self.preloaded: list[str] = []
        self.forked = 0  # runs served by the zygote (tests check that it was really used)

    async def start(self) -> None:
        """Launch the zygote now; it becomes ready in the background. Without this call the zygote
        starts on the first agent run (a lab whose phones never train never pays for importing torch)."""
        if self._process is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Never the host's whole environment: forked children inherit the zygote's start-up environment
        # block (their /proc/self/environ), whatever os.environ they are given afterwards.
        env = host_environment(self._env if self._env is not None else os.environ)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SERVER_SCRIPT),
                str(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        finally:
            theirs.close()
        self._control = ours
        self._ready = asyncio.ensure_future(self._await_ready())

    async def _await_ready(self) -> bool:
        assert self._process is not None and self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), self._start_timeout_s)
        except TimeoutError:
            log.warning("zygote did not start within %.0f s; using plain subprocesses", self._start_timeout_s)
            return False
        if not line.startswith(b"READY"):
            log.warning("zygote failed to start; using plain subprocesses")
            return False
        self.preloaded = line.decode().split(maxsplit=1)[1].strip().split(",") if b" " in line else []
        return True

    async def wait_ready(self) -> bool:
        if self._ready is None and not self._stopped:
            async with self._starting:
                await self.start()
        return bool(self._ready is not None and await asyncio.shield(self._ready))

    async def stop(self) -> None:
        self._stopped = True
        if self._control is not None:
            self._control.close()  # the zygote sees EOF, kills its children and exits
            self._control = None
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()

    async def run(self, launch: AgentLaunch, out: Output) -> int:
        if not launch.args or launch.args[0].startswith("-") or not await self.wait_ready():
            return await self._fallback.run(launch, out)
        try:
            return await self._run_forked(launch, out)
        except ZygoteUnavailable as exc:
            log.warning("zygote unavailable (%s); running a plain subprocess", exc)
            return await self._fallback.run(launch, out)

    async def _run_forked(self, launch: AgentLaunch, out: Output) -> int:
        if self._control is None:
            raise ZygoteUnavailable("stopped")
        program = launch.args[0]
        if not os.path.isabs(program):
            program = str(launch.cwd / program)
        request = json.dumps(
            {"program": program, "args": launch.args[1:], "cwd": str(launch.cwd), "env": launch.env}
        ).encode()
        status_ours, status_theirs = socket.socketpair()
        read_fd, write_fd = os.pipe()
        try:
            socket.send_fds(self._control, [request], [status_theirs.fileno(), write_fd])
        except OSError as exc:
            for fd in (read_fd,):
                os.close(fd)
            status_ours.close()
            raise ZygoteUnavailable(str(exc)) from None
        finally:
            status_theirs.close()
            os.close(write_fd)
        self.forked += 1
        return await self._follow(status_ours, read_fd, out)

    async def _follow(self, status_sock: socket.socket, read_fd: int, out: Output) -> int:
        loop = asyncio.get_running_loop()
        output = asyncio.StreamReader(limit=READ_CHUNK * 4)
        pipe_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_fd, "rb", buffering=0)
        )
        status_reader, status_writer = await asyncio.open_connection(sock=status_sock)
        pid = 0
        finished = False
        try:
            first = await status_reader.readline()
            if not first:
                raise ZygoteUnavailable("zygote closed the request")
            pid = int(json.loads(first)["pid"])
            while chunk := await output.read(READ_CHUNK):
                await out.write(chunk)
            last = await status_reader.readline()
            finished = True
            return int(json.loads(last)["exit"]) if last else 137
        finally:
            if pid and not finished:
                kill_group(pid)
                # Wait (briefly) for the zygote to reap it, as SubprocessRunner waits: a killed program
                # must be gone when its kill returns — a restarted agent would otherwise find its
                # predecessor still holding the phone's port.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(status_reader.readline(), 2.0)
            pipe_transport.close()
            status_writer.close()
            with contextlib.suppress(Exception):
                await status_writer.wait_closed()
