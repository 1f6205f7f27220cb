"""One virtual phone: its adbd listener, services, battery, availability and faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Coroutine
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
from devices.virtual.transport import OUR_VERSION, AdbStream, DeviceConnection, ServiceHandler, StreamClosed

log = logging.getLogger(__name__)


class StreamOutput:
    def __init__(self, stream: AdbStream) -> None:
        self._stream = stream

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)


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

    def service_for(self, name: str, connection: DeviceConnection) -> ServiceHandler | None:
        if name.startswith("shell:") or name.startswith("exec:"):
            command = name.split(":", 1)[1]
            if not command:
                return self._interactive_shell
            return lambda stream: self._shell_command(stream, command, connection)
        if name == "sync:":
            return self._sync
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
            env=agent_environment(
                dict(os.environ),
                slowdown=self.profile.speed_factor,
                behaviour=self.profile.behaviour,
                serial=self.profile.serial,
                home=self.sandbox.root,
            ),
        )
        self.battery.training_started()
        self.agents_running += 1
        try:
            return await self._runner.run(launch, out)
        finally:
            self.agents_running -= 1
            self.battery.training_finished()

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
