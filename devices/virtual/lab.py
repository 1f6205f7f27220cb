"""A lab of N virtual phones in one process, on consecutive loopback ports.

`VirtualLab` is the asyncio object; `LabThread` runs one in a background thread for synchronous owners
(the Django command, tests, the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from devices.virtual.auth import KeyStore
from devices.virtual.misbehaviour import Misbehaviour, apply_misbehaviour, write_record
from devices.virtual.phone import APP_WORK_DIR, VirtualPhone
from devices.virtual.profile import PhoneProfile, load_profiles
from devices.virtual.runner import ProgramRunner, SubprocessRunner
from devices.virtual.scenarios import Scenario, apply_scenario
from devices.virtual.zygote import ZygoteRunner

log = logging.getLogger(__name__)
T = TypeVar("T")

# Google's adb server probes 5555-5585 on start and adopts whatever answers as an emulator.
ADB_SCAN_PORTS = range(5555, 5586)
DEFAULT_BASE_PORT = 15555


class LabError(RuntimeError):
    """A lab that cannot start as configured (ports, profiles, keys)."""


@dataclass(frozen=True)
class LabConfig:
    lab_dir: Path
    phones: int = 3
    base_port: int = DEFAULT_BASE_PORT
    host: str = "127.0.0.1"
    keys_file: Path | None = None  # the adb_keys every phone trusts
    accept_new_keys: bool = False
    profiles_file: Path | None = None
    profiles: tuple[PhoneProfile, ...] = ()  # given directly (tests); wins over profiles_file
    seed: int = 0
    use_zygote: bool = True
    # Start the zygote (import torch) with the lab rather than on the first agent run: a lab meant for
    # training then has no slow first round. Off by default: a test lab that never trains never pays it.
    warm_zygote: bool = False
    tick_s: float = 0.2  # how often availability is re-evaluated
    scenario: Scenario | None = None  # replaces every profile's availability model (scenarios.py)
    # Hold every phone online for this many seconds (math.inf: until release_hold()), then start the
    # availability clock at 0 -- so a job can be prepared on every phone before the scenario begins.
    hold_online_s: float | None = None
    misbehaviour: Misbehaviour | None = None  # K seeded phones get a behaviour (misbehaviour.py)
    # An agent.pyz that phones with the Termux-like app get in /sdcard/fedfleet/ (as a person would copy
    # it there); their app's agent is then started with the lab (profile.termux.autostart).
    agent_pyz: Path | None = None
    # Files already on the phones before any job (phone-resident data): <seed_data>/phone-<index>/ is
    # copied into phone <index>'s work dir (/data/local/tmp/fedfleet/, a stock phone's /sdcard/fedfleet/),
    # as a person would have put them there. `manage.py phone_data_files` writes such a directory.
    seed_data: Path | None = None


SHELL_WORK_DIR = "/data/local/tmp/fedfleet"


@dataclass(frozen=True)
class PhoneEndpoint:
    serial: str
    host: str
    port: int
    model: str
    sandbox: Path
    agent_port: int | None = None  # the app's agent's loopback port (phones with the Termux-like app)
    agent_secret: str | None = None  # ... and its secret
    stock: bool = False  # the shell cannot run python (the agent lives only in the app)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def check_ports(base_port: int, count: int) -> None:
    ports = range(base_port, base_port + count)
    if ports.start < 1024 or ports.stop > 65536:
        raise LabError(f"ports {ports.start}-{ports.stop - 1} are outside 1024-65535")
    if set(ports) & set(ADB_SCAN_PORTS):
        raise LabError(
            f"ports {ports.start}-{ports.stop - 1} overlap 5555-5585, which Google's adb server scans "
            "and would adopt as emulators; choose another --base-port (default 15555)"
        )


AGENT_SECRETS_FILE = "agent_secrets.json"


def write_agent_secrets(lab_dir: Path, phones: list[VirtualPhone]) -> Path:
    """serial -> {port, secret} of every app agent, for the person running the lab (mode 0600): what
    they would type into each phone's Termux, and register with the platform."""
    path = lab_dir / AGENT_SECRETS_FILE
    record = {
        p.profile.serial: {"port": p.profile.termux.agent_port, "secret": p.agent_secret} for p in phones
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    return path


class VirtualLab:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.phones: list[VirtualPhone] = []
        self.runner: ProgramRunner = SubprocessRunner()
        self._ticker: asyncio.Task[None] | None = None
        self._holding = False

    def profiles(self) -> list[PhoneProfile]:
        if self.config.profiles:
            profiles = list(self.config.profiles)
        else:
            profiles = load_profiles(self.config.profiles_file, self.config.phones)
        profiles = apply_misbehaviour(profiles, self.config.misbehaviour, self.config.seed)
        return apply_scenario(profiles, self.config.scenario)

    async def start(self) -> list[PhoneEndpoint]:
        profiles = self.profiles()
        check_ports(self.config.base_port, len(profiles))
        lab_dir = Path(self.config.lab_dir).resolve()
        lab_dir.mkdir(parents=True, exist_ok=True)
        if self.config.misbehaviour is not None:  # the operator's record; the platform is not told
            record = write_record(lab_dir, profiles)
            # info, not warning: the lab's stdout/stderr carry the phone lines that scripts parse
            log.info("%d phones misbehave: %s", len(record), ", ".join(f"{k}={v}" for k, v in record.items()))
        if self.config.keys_file is not None and not Path(self.config.keys_file).is_file():
            raise LabError(f"adb_keys file {self.config.keys_file} does not exist")
        if self.config.use_zygote:
            self.runner = ZygoteRunner()  # started on the first agent run unless warm_zygote
            if self.config.warm_zygote:
                await self.runner.start()  # ready in the background; phones listen meanwhile
        started_at = time.monotonic()
        self._holding = self.config.hold_online_s is not None
        for index, profile in enumerate(profiles):
            self.phones.append(
                VirtualPhone(
                    profile,
                    index=index,
                    host=self.config.host,
                    port=self.config.base_port + index,
                    sandbox_root=lab_dir / profile.serial,
                    keys=KeyStore(self.config.keys_file, lab_dir / ".accepted_keys" / profile.serial),
                    accept_new_keys=self.config.accept_new_keys,
                    seed=self.config.seed,
                    runner=self.runner,
                    started_at=started_at,
                )
            )
        if self._holding:
            for phone in self.phones:
                phone.forced_online = True
        try:
            for phone in self.phones:
                await phone.start()
        except OSError as exc:
            await self.stop()
            raise LabError(f"cannot listen on {self.config.host}:{exc}") from exc
        if self.config.agent_pyz is not None and not Path(self.config.agent_pyz).is_file():
            await self.stop()
            raise LabError(f"agent.pyz {self.config.agent_pyz} does not exist")
        if self.config.seed_data is not None:
            try:
                seeded = seed_phone_files(self.phones, Path(self.config.seed_data))
            except (OSError, ValueError) as exc:
                await self.stop()
                raise LabError(f"cannot seed the phones' data from {self.config.seed_data}: {exc}") from exc
            log.info("seeded %d phones with files from %s", seeded, self.config.seed_data)
        with_app = [phone for phone in self.phones if phone.profile.termux.installed]
        if with_app:
            write_agent_secrets(lab_dir, with_app)
        for phone in with_app:
            if phone.profile.termux.autostart and self.config.agent_pyz is not None:
                await phone.start_app_agent(self.config.agent_pyz)
        self._ticker = asyncio.create_task(self._tick(), name="lab-availability")
        return self.endpoints()

    def endpoints(self) -> list[PhoneEndpoint]:
        return [
            PhoneEndpoint(
                p.profile.serial,
                p.host,
                p.port,
                p.profile.model,
                p.sandbox.root,
                agent_port=p.profile.termux.agent_port if p.profile.termux.installed else None,
                agent_secret=p.agent_secret or None,
                stock=p.profile.stock,
            )
            for p in self.phones
        ]

    def phone(self, serial: str) -> VirtualPhone:
        for phone in self.phones:
            if phone.profile.serial == serial:
                return phone
        raise KeyError(serial)

    @property
    def holding(self) -> bool:
        """True while every phone is held online and the availability clock has not started."""
        return self._holding

    async def release_hold(self) -> bool:
        """End the hold: the availability models take over with t = 0 now. False if nothing was held."""
        if not self._holding:
            return False
        self._holding = False
        now = time.monotonic()
        for phone in self.phones:
            phone.restart_availability_clock(now)
            phone.forced_online = None
        for phone in self.phones:
            await phone.apply_availability()
        log.info("availability scenario started")
        return True

    async def advance_clock(self, seconds: float) -> None:
        """Move every phone's availability clock `seconds` forward at once. With a scenario period much
        longer than the run, advancing by one period is a turn on demand: a benchmark can end each group's
        turn after a number of rounds rather than of seconds, whatever the machine's speed."""
        for phone in self.phones:
            phone.advance_availability_clock(seconds)
        for phone in self.phones:
            await phone.apply_availability()
        log.info("availability clock advanced by %g s", seconds)

    async def _tick(self) -> None:
        hold_ends = time.monotonic() + (self.config.hold_online_s or 0.0)
        while True:
            if self._holding and time.monotonic() >= hold_ends:
                await self.release_hold()
            for phone in self.phones:
                try:
                    await phone.apply_availability()
                except OSError as exc:  # the port was taken while the phone was away
                    log.warning("%s cannot come back online: %s", phone.profile.serial, exc)
            await asyncio.sleep(self.config.tick_s)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for phone in self.phones:
            phone.forced_online = False
            await phone.stop()
        # give aborted connections a moment to finish their tear-down (agents killed, files closed)
        for _ in range(100):
            if not any(phone.connection_count for phone in self.phones):
                break
            await asyncio.sleep(0.01)
        if isinstance(self.runner, ZygoteRunner):
            await self.runner.stop()


class LabThread:
    """A VirtualLab on its own event loop in a daemon thread."""

    def __init__(self, config: LabConfig) -> None:
        self.lab = VirtualLab(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.endpoints: list[PhoneEndpoint] = []

    def start(self, timeout_s: float = 60.0) -> list[PhoneEndpoint]:
        self._thread = threading.Thread(target=self._main, name="virtual-lab", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise LabError(f"the lab did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self.endpoints

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.endpoints = await self.lab.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.lab.stop()

    def call(self, action: Callable[[VirtualLab], Awaitable[T]], timeout_s: float = 30.0) -> T:
        """Run a coroutine against the lab on its loop, from any thread."""
        assert self._loop is not None

        async def run() -> T:
            return await action(self.lab)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def advance_clock_soon(self, seconds: float) -> None:
        """VirtualLab.advance_clock without waiting (safe from a signal handler)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.lab.advance_clock(seconds), self._loop)

    def release_hold_soon(self) -> None:
        """Start the availability scenario without waiting (safe from a signal handler)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.lab.release_hold(), self._loop)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> LabThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def seed_phone_files(phones: list[VirtualPhone], source: Path) -> int:
    """Copy <source>/phone-<index>/ into each phone's work dir; the number of phones seeded. A phone
    without a folder gets nothing (it has no data of its own: its rounds fail with the agent's reason)."""
    if not source.is_dir():
        raise ValueError("not a directory")
    seeded = 0
    for index, phone in enumerate(phones):
        folder = source / f"phone-{index:04d}"
        if not folder.is_dir():
            continue
        work_dir = phone.sandbox.resolve(APP_WORK_DIR if phone.profile.stock else SHELL_WORK_DIR, write=True)
        shutil.copytree(folder, work_dir, dirs_exist_ok=True, symlinks=False)
        seeded += 1
    return seeded
