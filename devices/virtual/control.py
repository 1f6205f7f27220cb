"""The lab's control channel and its record of agent runs: what a benchmark (bench/chaos.py) or a person
changes while the phones run, and what ran on each phone, when.

    python -m devices.virtual --phones 10 --control-socket /path/lab.sock ...

Requests are one JSON object per line on a Unix socket, each answered with one JSON line:
{"ok": true, ...} or {"ok": false, "error": "<why>"}. A malformed request gets its error and the connection
stays usable; a line over MAX_REQUEST_BYTES ends the connection. The socket is made 0600 (whoever can reach
it controls the phones); put it in a directory only the lab's user can enter.

    {"op": "status"}                               each phone: online, agents running, armed faults; run totals
    {"op": "online", "phone": S, "online": false}  force a phone off (or true: on); null hands it back to its
                                                   availability model. Off closes its listener and aborts its
                                                   connections at once, killing its agents.
    {"op": "drop_transfer", "phone": S}            its next push or pull drops the connection mid-transfer
    {"op": "stall_run", "phone": S, "seconds": X}  its next agent run freezes X s before the program starts
                                                   (a phone hanging in training; the command stays open)

The record: every program the phones' python runs is logged as a "start" and an "exit" line in
<lab dir>/agent_runs.jsonl (phone, run number, wall time, the program's arguments; at exit its status, or
null when it was cancelled: stream closed, phone offline). A run that starts while another run of the same
phone is alive — two agents on one phone — counts as an overlap, in `status` and in the start line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.virtual.cli import phone_line
from devices.virtual.lab import LabConfig, LabThread, VirtualLab
from devices.virtual.phone import VirtualPhone
from devices.virtual.runner import AgentLaunch, Output, ProgramRunner

RUN_LOG_NAME = "agent_runs.jsonl"
MAX_REQUEST_BYTES = 64 * 1024
MAX_STALL_S = 24 * 3600.0


class ControlError(ValueError):
    """A request the lab cannot carry out; its message is the reply's error."""


# ------------------------------------------------------------------------------------------ the record
@dataclass
class PhoneRuns:
    live: set[int] = field(default_factory=set)
    started: int = 0
    overlaps: int = 0  # runs that started while another run of this phone was alive
    max_live: int = 0


class RunLog:
    """Agent starts and exits per phone, appended to a JSON-lines file as they happen (line-buffered, so
    a reader sees every finished line even while the lab runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._next_run = 1
        self.phones: dict[str, PhoneRuns] = {}

    def started(self, serial: str, args: list[str]) -> int:
        runs = self.phones.setdefault(serial, PhoneRuns())
        run = self._next_run
        self._next_run += 1
        alive_before = sorted(runs.live)
        runs.live.add(run)
        runs.started += 1
        runs.max_live = max(runs.max_live, len(runs.live))
        if alive_before:
            runs.overlaps += 1
        self._write({"event": "start", "phone": serial, "run": run, "args": args, "alive": alive_before})
        return run

    def exited(self, serial: str, run: int, *, status: int | None, stalled_s: float) -> None:
        self.phones[serial].live.discard(run)
        self._write({"event": "exit", "phone": serial, "run": run, "status": status, "stalled_s": stalled_s})

    def totals(self) -> dict[str, int]:
        return {
            "started": sum(r.started for r in self.phones.values()),
            "alive": sum(len(r.live) for r in self.phones.values()),
            "overlaps": sum(r.overlaps for r in self.phones.values()),
        }

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"t": round(time.time(), 3), **record}, sort_keys=True) + "\n")

    def close(self) -> None:
        self._file.close()


class RecordedRunner:
    """One phone's ProgramRunner, wrapped: each run is recorded, and an armed stall delays the next one."""

    def __init__(self, inner: ProgramRunner, serial: str, log: RunLog) -> None:
        self._inner = inner
        self._serial = serial
        self._log = log
        self.stall_next_s = 0.0

    async def run(self, launch: AgentLaunch, out: Output) -> int:
        run = self._log.started(self._serial, launch.args)
        stall, self.stall_next_s = self.stall_next_s, 0.0
        status: int | None = None
        try:
            if stall:
                await asyncio.sleep(stall)  # the phone hangs; a closed stream cancels this like a run
            status = await self._inner.run(launch, out)
            return status
        finally:
            self._log.exited(self._serial, run, status=status, stalled_s=stall)


def record_runs(lab: VirtualLab, log: RunLog) -> dict[str, RecordedRunner]:
    """Wrap every phone's runner of a started lab in a RecordedRunner (serial -> its runner)."""
    runners = {}
    for phone in lab.phones:
        # VirtualLab.start() hands each phone the runner it built when the phone is made: the record
        # can only wrap it in place, afterwards.
        runner = RecordedRunner(phone._runner, phone.profile.serial, log)
        phone._runner = runner
        runners[phone.profile.serial] = runner
    return runners


# ------------------------------------------------------------------------------------------ the channel
class LabControl:
    def __init__(self, lab: VirtualLab, log: RunLog) -> None:
        self._lab = lab
        self.log = log
        self._runners = record_runs(lab, log)
        self._server: asyncio.Server | None = None

    async def handle(self, request: Any) -> dict[str, Any]:
        """Carry out one request; ControlError says why one cannot be."""
        if not isinstance(request, dict):
            raise ControlError("a request is a JSON object")
        op = request.get("op")
        if op == "status":
            return self.status()
        phone = self._phone(request.get("phone"))
        serial = phone.profile.serial
        if op == "online":
            wanted = request.get("online", "missing")
            if wanted is not None and not isinstance(wanted, bool):
                raise ControlError("online must be true, false or null")
            phone.forced_online = wanted
            await phone.apply_availability()
            return {"phone": serial, "online": phone.online}
        if op == "drop_transfer":
            phone.faults.arm_transfer_drop()
            return {"phone": serial, "drops_armed": phone.faults.armed_drops}
        if op == "stall_run":
            seconds = request.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ControlError("seconds must be a number")
            if not (math.isfinite(seconds) and 0 < seconds <= MAX_STALL_S):
                raise ControlError(f"seconds must be in (0, {MAX_STALL_S:.0f}]")
            self._runners[serial].stall_next_s = float(seconds)
            return {"phone": serial, "stall_armed_s": float(seconds)}
        raise ControlError(f"unknown op {op!r}: status, online, drop_transfer or stall_run")

    def status(self) -> dict[str, Any]:
        phones = {}
        for phone in self._lab.phones:
            serial = phone.profile.serial
            runs = self.log.phones.get(serial, PhoneRuns())
            phones[serial] = {
                "online": phone.online,
                "forced_online": phone.forced_online,
                "agents_running": len(runs.live),
                "runs": runs.started,
                "overlaps": runs.overlaps,
                "drops_armed": phone.faults.armed_drops,
                "drops_planned": phone.faults.drops_planned,
                "stall_armed_s": self._runners[serial].stall_next_s,
            }
        return {"phones": phones, "runs": self.log.totals(), "run_log": str(self.log.path)}

    def _phone(self, serial: Any) -> VirtualPhone:
        if not isinstance(serial, str):
            raise ControlError("phone must be a serial")
        try:
            return self._lab.phone(serial)
        except KeyError:
            raise ControlError(f"no phone {serial!r} in this lab") from None

    async def serve(self, path: Path) -> None:
        """Listen on the Unix socket `path` (a stale socket there is replaced; any other file refuses)."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ControlError(f"{path} exists and is not a socket")
            path.unlink()
        self._server = await asyncio.start_unix_server(self._on_client, path, limit=MAX_REQUEST_BYTES)
        path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.log.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over the limit: the rest of the line cannot be found reliably
                    await self._reply(
                        writer, {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes"}
                    )
                    return
                if not line:
                    return
                await self._reply(writer, await self._answer(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            return {"ok": True, **await self.handle(request)}
        except (ValueError, UnicodeDecodeError) as exc:  # ControlError and JSONDecodeError are ValueErrors
            reason = str(exc) if isinstance(exc, ControlError) else f"not JSON: {exc}"
            return {"ok": False, "error": reason}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
        await writer.drain()


def request(path: Path, message: dict[str, Any], *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request to a lab's control socket and return its answer (the client side, stdlib only)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the lab closed the control connection without an answer")
            answer += chunk
    reply: dict[str, Any] = json.loads(answer)
    return reply


# ------------------------------------------------------------------------------------------ serving
def attach_control(lab: LabThread, socket_path: Path) -> LabControl:
    """Start recording runs and listening on `socket_path`, on the lab's own event loop."""

    async def attach(virtual_lab: VirtualLab) -> LabControl:
        log = RunLog(Path(virtual_lab.config.lab_dir).resolve() / RUN_LOG_NAME)
        control = LabControl(virtual_lab, log)
        await control.serve(socket_path)
        return control

    return lab.call(attach)


def serve_with_control(config: LabConfig, socket_path: Path, write: Callable[[str], None]) -> None:
    """cli.serve_until_signal with the control channel: start the lab, attach it, announce each phone and
    READY, run until SIGINT or SIGTERM. SIGUSR1/SIGUSR2 start and advance a scenario as there."""
    stop = threading.Event()
    lab = LabThread(config)

    def start_scenario(*_: object) -> None:
        if config.hold_online_s is not None:
            lab.release_hold_soon()
            write("SCENARIO STARTED")

    def next_turn(*_: object) -> None:
        if config.scenario is not None:
            lab.advance_clock_soon(config.scenario.period)
            write("SCENARIO ADVANCED")

    handlers: dict[signal.Signals, Callable[..., None]] = {
        signal.SIGINT: lambda *_: stop.set(),
        signal.SIGTERM: lambda *_: stop.set(),
        signal.SIGUSR1: start_scenario,
        signal.SIGUSR2: next_turn,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    control: LabControl | None = None
    try:
        endpoints = lab.start()
        control = attach_control(lab, socket_path)
        for endpoint in endpoints:
            write(phone_line(endpoint))
        write(f"CONTROL {socket_path}")
        write("READY")
        stop.wait()
    finally:
        if control is not None:
            attached = control
            lab.call(lambda _lab: attached.close())
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
        lab.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
