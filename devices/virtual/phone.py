"""One virtual phone: its adbd listener, services, battery, availability and faults.

The phone's loopback: many virtual phones share one host, so a program on a phone cannot listen on the
real 127.0.0.1:P — two phones' agents on "port 7000" would collide. Programs the phone runs get
FEDFLEET_LOOPBACK_DIR=<sandbox root>/.loopback (out of reach of the phone's shell); a program that would
listen on loopback port P binds an OS-chosen host port instead and records it in that directory as the
file `P` (training/agent/serve.py does). The `tcp:P` service looks P up there and connects the ADB stream
to that host port, as adbd connects it to 127.0.0.1:P on a phone; no entry, or nothing accepting on the
recorded port, and the OPEN is refused with CLSE(0, host id), as adbd refuses it.

The Termux-like app (profile.termux): start_app_agent() does what a person does once in Termux —
`python agent.pyz serve --port <agent_port> --secret-file ~/.fedfleet-agent-secret` with agent.pyz in
/sdcard/fedfleet/ (the app's work dir; the shell can push there too) — through the same runner as the
shell's python (zygote or subprocess). The app's home (/data/data/com.termux/files/home: secret, log) is
outside the shell's sandbox, as on a phone. Nobody restarts the app's agent when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from devices.virtual import android_info
from devices.virtual.auth import KeyStore
from devices.virtual.availability import AvailabilityModel, build_availability
from devices.virtual.battery import Battery, BatteryState
from devices.virtual.commands import BUILTINS
from devices.virtual.faults import FaultInjector
from devices.virtual.profile import PhoneProfile
from devices.virtual.runner import AgentLaunch, ProgramRunner, agent_environment
from devices.virtual.sandbox import Sandbox, SandboxError
from devices.virtual.shell import Output, Shell
from devices.virtual.sync import SyncSession
from devices.virtual.transport import (
    OUR_VERSION,
    AdbStream,
    DeferredService,
    DeviceConnection,
    ServiceHandler,
    StreamClosed,
)

log = logging.getLogger(__name__)

# `tcp:<port>`, or adbd's older `tcp:<port>:<host>` naming the phone's own loopback
_TCP_SERVICE = re.compile(r"tcp:(\d{1,5})(?::(?:localhost|127\.0\.0\.1))?")
TCP_CONNECT_TIMEOUT_S = 5.0
APP_WORK_DIR = "/sdcard/fedfleet"  # where the app's agent keeps agent.pyz and the jobs' files
APP_HOME = "data/data/com.termux/files/home"  # relative to the sandbox root; the shell cannot reach it
APP_SECRET_FILE = ".fedfleet-agent-secret"  # noqa: S105 - a file name
APP_LOG_FILE = "agent.log"


class StreamOutput:
    def __init__(self, stream: AdbStream) -> None:
        self._stream = stream

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)


class LogOutput:
    """The app's terminal: what its agent prints goes to a log file in the app's home."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("ab", buffering=0)

    async def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


async def relay(stream: AdbStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy both ways between an ADB stream and a TCP connection until either side closes."""

    async def to_program() -> None:
        while chunk := await stream.read():
            writer.write(chunk)
            await writer.drain()

    async def to_host() -> None:
        while chunk := await reader.read(stream.connection.max_payload):
            await stream.write(chunk)

    tasks = {asyncio.ensure_future(to_program()), asyncio.ensure_future(to_host())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # StreamClosed / ConnectionResetError just end the relay: either side may go at any time
        await asyncio.gather(*tasks, return_exceptions=True)


class VirtualPhone:
    def __init__(
        self,
        profile: PhoneProfile,
        *,
        index: int,
        host: str,
        port: int,
        sandbox_root: Path,
        keys: KeyStore,
        accept_new_keys: bool,
        seed: int,
        runner: ProgramRunner,
        started_at: float,
    ) -> None:
        self.profile = profile
        self.index = index
        self.host = host
        self.port = port
        self.sandbox = Sandbox(sandbox_root)
        self.keys = keys
        self._accept_new_keys = accept_new_keys
        self._runner = runner
        self._started_at = started_at
        phone_seed = seed * 1_000_003 + index  # lab seed + phone index: reproducible and distinct
        self.rng = random.Random(phone_seed)
        self.faults = FaultInjector(profile.faults, random.Random(phone_seed + 1))
        self.availability: AvailabilityModel = build_availability(profile.availability, phone_seed)
        self.battery = Battery(profile.battery)
        self.protocol_version = OUR_VERSION  # set 0x01000000 to act as an old adbd that checksums payloads
        self.forced_online: bool | None = None  # set by the lab's owner (tests, demos) to override the model
        self.online = False
        self.agents_running = 0
        self.loopback_dir = self.sandbox.root / ".loopback"
        # The phone's agent secret, as the person typed it into the app (the platform shows it per phone).
        self.agent_secret = profile.termux.agent_secret or (
            secrets.token_urlsafe(24) if profile.termux.installed else ""
        )
        # Background jobs the shell started (`cmd &`), by pid: they outlive the shell stream, as a
        # nohup'ed process outlives `adb shell` (the resident runtime's agent serve).
        self._jobs: dict[int, asyncio.Task[int]] = {}
        self._next_pid = 4000 + 7 * index
        self._app_task: asyncio.Task[int] | None = None
        self._app_exit: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[DeviceConnection] = set()
        self._transition = asyncio.Lock()

    # --- ServiceHost ------------------------------------------------------------------------------
    @property
    def accept_new_keys(self) -> bool:
        return self._accept_new_keys

    def banner(self) -> bytes:
        p = self.profile
        # No features: Google's adb then uses legacy `shell:` and sync v1, which is what we implement.
        return f"device::ro.product.name={p.product};ro.product.model={p.model};ro.product.device={p.device};features=".encode()

    def service_for(self, name: str, connection: DeviceConnection) -> ServiceHandler | DeferredService | None:
        if name.startswith("shell:") or name.startswith("exec:"):
            command = name.split(":", 1)[1]
            if not command:
                return self._interactive_shell
            return lambda stream: self._shell_command(stream, command, connection)
        if name == "sync:":
            return self._sync
        tcp = _TCP_SERVICE.fullmatch(name)
        if tcp is not None and 0 < int(tcp[1]) < 65536:
            port = int(tcp[1])
            return DeferredService(lambda stream: self._tcp(stream, port))
        return None

    # --- PhoneView (what the shell uses) ----------------------------------------------------------
    def battery_state(self) -> BatteryState:
        return self.battery.state()

    def properties(self) -> dict[str, str]:
        return android_info.system_properties(self.profile)

    async def run_python(self, args: list[str], cwd: str, out: Output) -> int:
        try:
            host_cwd = self.sandbox.resolve(cwd)
        except SandboxError:
            host_cwd = self.sandbox.root
        launch = AgentLaunch(
            args=[self.sandbox.map_argument(arg, cwd) for arg in args],
            cwd=host_cwd,
            env=self._program_environment(),
        )
        # A resident agent (`agent.pyz serve`) waits for work most of its life: it does not count as
        # training for the battery.
        serving = len(args) > 1 and args[1] == "serve"
        if not serving:
            self.battery.training_started()
        self.agents_running += 1
        try:
            return await self._runner.run(launch, out)
        finally:
            self.agents_running -= 1
            if not serving:
                self.battery.training_finished()

    # --- background jobs (shell.py's `&`, commands.py's kill) --------------------------------------
    def start_job(self, work: Callable[[], Awaitable[int]]) -> int:
        pid = self._next_pid
        self._next_pid += 1

        async def run() -> int:
            try:
                return await work()
            finally:
                self._jobs.pop(pid, None)

        self._jobs[pid] = asyncio.ensure_future(run())
        return pid

    def job_alive(self, pid: int) -> bool:
        task = self._jobs.get(pid)
        return task is not None and not task.done()

    async def kill_job(self, pid: int) -> bool:
        """Cancelling the job kills its process group (the runner's clean-up), as SIGKILL would."""
        task = self._jobs.get(pid)
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    @property
    def job_pids(self) -> list[int]:
        return sorted(pid for pid, task in self._jobs.items() if not task.done())

    def _program_environment(self) -> dict[str, str]:
        return agent_environment(
            dict(os.environ),
            slowdown=self.profile.speed_factor,
            behaviour=self.profile.behaviour,
            serial=self.profile.serial,
            home=self.sandbox.root,
            loopback_dir=self.loopback_dir,
        )

    # --- the phone's loopback (see the module docstring) --------------------------------------------
    def loopback_port(self, port: int) -> int | None:
        """The host port behind phone loopback port `port`, if a program of this phone listens on it."""
        try:
            text = (self.loopback_dir / str(port)).read_text(encoding="ascii").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and 0 < int(text) < 65536 else None

    async def _tcp(self, stream: AdbStream, port: int) -> None:
        """`tcp:<port>`: connect first (refused unless something accepts), then carry bytes both ways."""
        host_port = self.loopback_port(port)
        if host_port is None:
            return  # nothing listens: not accepted, so refused
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", host_port), TCP_CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            return
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream.accept()
            await relay(stream, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- the Termux-like app's agent (see the module docstring) -------------------------------------
    @property
    def app_home(self) -> Path:
        return self.sandbox.root / APP_HOME

    @property
    def app_agent_running(self) -> bool:
        return self._app_task is not None and not self._app_task.done()

    @property
    def app_agent_exit(self) -> int | None:
        """The exit status of the app's last agent, once it ended (None while running or never run)."""
        return self._app_exit

    async def start_app_agent(self, agent_pyz: Path | None = None) -> None:
        """Start `agent.pyz serve` in the app, installing `agent_pyz` first when the phone has none.
        Returns once the agent was launched (it listens a moment later: connect over `tcp:` to know)."""
        termux = self.profile.termux
        if not termux.installed:
            raise RuntimeError(f"{self.profile.serial} has no Termux-like app installed")
        if self.app_agent_running:
            return
        work_dir = self.sandbox.resolve(APP_WORK_DIR, write=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        installed = work_dir / "agent.pyz"
        if not installed.exists():
            if agent_pyz is None:
                raise RuntimeError(f"no agent.pyz in {APP_WORK_DIR} on {self.profile.serial}")
            shutil.copyfile(agent_pyz, installed)
        self.app_home.mkdir(parents=True, exist_ok=True)
        secret_file = self.app_home / APP_SECRET_FILE
        secret_file.write_text(self.agent_secret + "\n", encoding="ascii")
        secret_file.chmod(0o600)
        launch = AgentLaunch(
            args=[
                str(installed),
                "serve",
                "--port",
                str(termux.agent_port),
                "--secret-file",
                str(secret_file),
            ],
            cwd=work_dir,
            env=self._program_environment(),
        )
        self._app_exit = None
        self._app_task = asyncio.create_task(self._run_app(launch), name=f"app-agent:{self.profile.serial}")

    async def _run_app(self, launch: AgentLaunch) -> int:
        output = LogOutput(self.app_home / APP_LOG_FILE)
        try:
            status = await self._runner.run(launch, output)
            self._app_exit = status
            log.info("%s: the app's agent exited with %d", self.profile.serial, status)
            return status
        finally:
            output.close()

    async def stop_app_agent(self) -> None:
        """Kill the app's agent (its process group), as Android does to a background app."""
        task = self._app_task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._app_exit = 137

    # --- services ---------------------------------------------------------------------------------
    async def _shell_command(self, stream: AdbStream, command: str, connection: DeviceConnection) -> None:
        plan = self.faults.plan_command()
        if plan.stall_s:
            await asyncio.sleep(plan.stall_s)
        loop = asyncio.get_running_loop()
        drop = loop.call_later(plan.drop_after_s, connection.abort) if plan.drop_after_s is not None else None
        try:
            await _until_closed(stream, Shell(self, BUILTINS).run(command, StreamOutput(stream)))
            if drop is not None:
                connection.abort()  # a planned drop that the command outran still happens
                raise StreamClosed("fault injection: connection dropped at the end of a command")
        finally:
            if drop is not None:
                drop.cancel()

    async def _interactive_shell(self, stream: AdbStream) -> None:
        shell = Shell(self, BUILTINS)
        out = StreamOutput(stream)
        prompt = f"{self.profile.device}:/ $ ".encode()
        pending = b""
        await out.write(prompt)
        while not shell.state.exited:
            chunk = await stream.read()
            if not chunk:
                return
            pending += chunk.replace(b"\r", b"\n")
            while b"\n" in pending and not shell.state.exited:
                line, pending = pending.split(b"\n", 1)
                await out.write(line + b"\r\n")  # a terminal echoes what was typed
                await shell.run(line.decode("utf-8", errors="replace"), out)
                if not shell.state.exited:
                    await out.write(prompt)

    async def _sync(self, stream: AdbStream) -> None:
        await SyncSession(stream, self.sandbox, self.faults).run()

    # --- listening and availability ---------------------------------------------------------------
    def lab_time(self) -> float:
        return time.monotonic() - self._started_at

    def restart_availability_clock(self, started_at: float) -> None:
        """Make `started_at` (time.monotonic()) the availability model's t = 0 (the lab's hold ended)."""
        self._started_at = started_at

    def advance_availability_clock(self, seconds: float) -> None:
        """Jump the availability model's clock forward (a benchmark turns the scenario by rounds)."""
        self._started_at -= seconds

    def should_be_online(self, t: float | None = None) -> bool:
        if self.forced_online is not None:
            return self.forced_online
        if self.battery.empty:
            return False  # a flat battery switches the phone off
        return self.availability.online_at(self.lab_time() if t is None else t)

    async def start(self) -> None:
        self.sandbox.create_layout()
        await self.apply_availability()

    async def stop(self) -> None:
        await self.set_online(False)
        await self.stop_app_agent()
        for pid in self.job_pids:
            await self.kill_job(pid)

    async def apply_availability(self) -> None:
        wanted = self.should_be_online()
        if wanted != self.online:
            await self.set_online(wanted)

    async def set_online(self, online: bool) -> None:
        async with self._transition:
            if online and not self.online:
                self._server = await asyncio.start_server(
                    self._on_connect, self.host, self.port, reuse_address=True, limit=4 * 1024 * 1024
                )
                self.online = True
            elif not online and self.online:
                self.online = False
                if self._server is not None:
                    self._server.close()  # refuse new connections, as a phone that left the network
                    self._server = None
                for connection in list(self._connections):
                    connection.abort()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.online:
            writer.transport.abort()
            return
        connection = DeviceConnection(
            reader,
            writer,
            self,
            bandwidth_bps=self.faults.profile.bandwidth_bps,
            max_version=self.protocol_version,
        )
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)

    @property
    def connection_count(self) -> int:
        return len(self._connections)


async def _until_closed(stream: AdbStream, work: Coroutine[Any, Any, Any]) -> None:
    """Run a service's work, cancelling it if the host closes the stream first (kills a running agent)."""
    task = asyncio.ensure_future(work)
    closed = asyncio.ensure_future(stream.closed.wait())
    try:
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not task.done():
            task.cancel()
        # wait for its clean-up (killing an agent) even when we are being cancelled ourselves
        await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
