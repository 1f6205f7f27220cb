"""Keep the lab's processes running: restart one that exits, stop them all on request.

`make demo` (scripts/demo.py) runs Redis, Daphne, both Celery workers, beat and the virtual lab. When one
of them exits — a worker killed by the OOM killer, a Redis that crashed — the others go on and this
supervisor starts that one again after a backoff and says so, with a restart counter, where honcho (its
predecessor here) stopped the whole lab. Ctrl-C (SIGINT) or SIGTERM stops everything: SIGTERM to each
process group in reverse start order, programs marked `stop_last` (Redis, so that workers can still
acknowledge what they finish) once the others are gone, SIGKILL for whatever is left after
`stop_timeout_s`; a second Ctrl-C kills at once.

Each program runs in its own session (process group): the terminal's Ctrl-C reaches only the supervisor,
which stops the programs in order, and stopping or restarting a program also ends what it forked (a
prefork worker's pool, the lab's phones).

Also a command: `python -m config.supervisor NAME=COMMAND ...` (the tests drive it that way).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

SUPERVISOR_NAME = "demo"


@dataclass(frozen=True)
class Program:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # On the first start only: the next program starts once this returns True (Redis answering PING).
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 30.0
    # Stopped after all the others have stopped (Redis: workers acknowledge what they finish on the way).
    stop_last: bool = False


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n of a run of quick failures: first_s, first_s*factor, ... capped at max_s.
    A program that ran at least healthy_after_s before it exited starts a new run (waits first_s)."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    healthy_after_s: float = 30.0

    def delay(self, quick_failures: int) -> float:
        return min(self.max_s, self.first_s * self.factor ** max(0, quick_failures - 1))


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class _Running:
    program: Program
    process: subprocess.Popen[bytes]
    started_at: float
    generation: int


@dataclass
class _History:
    restarts: int = 0
    quick_failures: int = 0


@dataclass
class _Exited:
    name: str
    generation: int
    returncode: int


@dataclass
class _StopRequest:
    pass


@dataclass
class Supervisor:
    programs: Sequence[Program]
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    backoff: Backoff = field(default_factory=Backoff)
    stop_timeout_s: float = 10.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        names = [p.name for p in self.programs]
        if len(set(names)) != len(names):
            raise ValueError(f"program names must be unique: {names}")
        # SimpleQueue: its put() may be called from a signal handler (request_stop) while the main thread
        # is inside get(); queue.Queue's lock would deadlock there.
        self._events: queue.SimpleQueue[_Exited | _StopRequest] = queue.SimpleQueue()
        self._running: dict[str, _Running] = {}
        self._history = {p.name: _History() for p in self.programs}
        self._due: dict[str, float] = {}  # name -> when its restart is due
        self._generation = 0
        self._print_lock = threading.Lock()
        self._width = max([len(SUPERVISOR_NAME), *(len(n) for n in names)])

    # ------------------------------------------------------------------------------------------ output
    def say(self, text: str, *, name: str = SUPERVISOR_NAME) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._print_lock:
            for line in text.splitlines() or [""]:
                self.out.write(f"{stamp} {name:<{self._width}} | {line}\n")
            self.out.flush()

    def _relay_output(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(raw.decode(errors="replace").rstrip("\r\n"), name=name)
        stream.close()

    # ----------------------------------------------------------------------------------- process control
    def _start(self, program: Program) -> _Running:
        process = subprocess.Popen(
            program.argv,
            env=dict(program.env) if program.env is not None else None,
            cwd=program.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see the module docstring
        )
        assert process.stdout is not None
        threading.Thread(target=self._relay_output, args=(program.name, process.stdout), daemon=True).start()
        return self._watch(program, process)

    def _watch(self, program: Program, process: subprocess.Popen[bytes]) -> _Running:
        self._generation += 1
        running = _Running(program, process, self.clock(), self._generation)
        self._running[program.name] = running

        def wait() -> None:
            self._events.put(_Exited(program.name, running.generation, process.wait()))

        threading.Thread(target=wait, daemon=True).start()
        return running

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Signal the program's process group (itself and what it forked), else just the process."""
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Not a group leader (an adopted process) or the group is gone: the process alone.
            with contextlib.suppress(ProcessLookupError):
                if process.poll() is None:
                    process.send_signal(sig)

    # ------------------------------------------------------------------------------------------ running
    def request_stop(self) -> None:
        """Stop everything (safe to call from a signal handler or another thread). A second request while
        stopping kills what is left at once."""
        self._events.put(_StopRequest())

    def run(self, adopted: Mapping[str, subprocess.Popen[bytes]] | None = None) -> int:
        """Start the programs (or watch the already-running `adopted` ones), keep them running until
        request_stop(), then stop them. Returns 0 after a requested stop, 1 if the first start failed."""
        adopted = adopted or {}
        try:
            for program in self.programs:
                if program.name in adopted:
                    running = self._watch(program, adopted[program.name])
                else:
                    running = self._start(program)
                self.say(f"{program.name} started (pid {running.process.pid})")
                if program.ready is not None and not self._wait_ready(program, running):
                    return 1
            self._supervise()
            return 0
        finally:
            self._stop_all()

    def _wait_ready(self, program: Program, running: _Running) -> bool:
        deadline = self.clock() + program.ready_timeout_s
        while not (program.ready and program.ready()):
            if running.process.poll() is not None:
                self.say(f"{program.name} {describe_exit(running.process.returncode)} before it was ready")
                return False
            if self.clock() > deadline:
                self.say(f"{program.name} was not ready within {program.ready_timeout_s:.0f} s")
                return False
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(event, _StopRequest):  # Ctrl-C while starting ends the start
                return False
            self._on_exit(event)  # an earlier program exited meanwhile: its restart is scheduled
        return True

    def _supervise(self) -> None:
        while True:
            timeout = max(0.0, min(self._due.values()) - self.clock()) if self._due else None
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                self._restart_due()
                continue
            if isinstance(event, _StopRequest):
                return
            self._on_exit(event)

    def _on_exit(self, event: _Exited) -> None:
        running = self._running.get(event.name)
        if running is None or running.generation != event.generation:
            return  # an instance already replaced
        del self._running[event.name]
        # A crashed leader's children (a prefork pool, phones) must not outlive it beside its successor.
        self._signal_group(running.process, signal.SIGKILL)
        ran_s = self.clock() - running.started_at
        self._schedule_restart(event.name, f"{describe_exit(event.returncode)} after {ran_s:.1f} s", ran_s)

    def _schedule_restart(self, name: str, what_happened: str, ran_s: float) -> None:
        history = self._history[name]
        history.quick_failures = 1 if ran_s >= self.backoff.healthy_after_s else history.quick_failures + 1
        history.restarts += 1
        delay = self.backoff.delay(history.quick_failures)
        self._due[name] = self.clock() + delay
        self.say(f"{name} {what_happened}: restart {history.restarts} in {delay:.2f} s")

    def _restart_due(self) -> None:
        now = self.clock()
        for name in [n for n, due in self._due.items() if due <= now]:
            del self._due[name]
            program = next(p for p in self.programs if p.name == name)
            try:
                running = self._start(program)
            except OSError as exc:  # e.g. its binary is gone: try again after the next backoff step
                self._schedule_restart(name, f"could not be started ({exc})", 0.0)
                continue
            self.say(f"{name} restarted (pid {running.process.pid}, restart {self._history[name].restarts})")

    def _stop_all(self) -> None:
        self._due.clear()
        for last in (False, True):
            phase = [
                p.name for p in reversed(self.programs) if p.stop_last == last and p.name in self._running
            ]
            if phase and not self._stop(phase):
                break  # asked again: kill the rest at once
        for name, running in list(self._running.items()):
            self.say(f"{name} did not stop within {self.stop_timeout_s:.0f} s: SIGKILL")
            self._signal_group(running.process, signal.SIGKILL)
            running.process.wait()
            del self._running[name]
        self.say("all stopped")

    def _stop(self, names: list[str]) -> bool:
        """SIGTERM these programs (in this order) and wait up to stop_timeout_s for them to exit.
        False if a second stop request came meanwhile."""
        self.say("stopping " + ", ".join(names))
        for name in names:
            self._signal_group(self._running[name].process, signal.SIGTERM)
        deadline = self.clock() + self.stop_timeout_s
        while any(name in self._running for name in names):
            try:
                event = self._events.get(timeout=max(0.0, deadline - self.clock()))
            except queue.Empty:
                return True  # the caller kills what is left
            if isinstance(event, _StopRequest):
                return False
            stopped = self._running.get(event.name)
            if stopped is not None and stopped.generation == event.generation:
                del self._running[event.name]
                self._signal_group(stopped.process, signal.SIGKILL)  # its leftovers, if any
                self.say(f"{event.name} stopped ({describe_exit(event.returncode)})")
        return True


def install_stop_signals(supervisor: Supervisor) -> None:
    """Ctrl-C and SIGTERM stop the supervisor (and with it every program) cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: supervisor.request_stop())


def _parse_program(spec: str) -> Program:
    name, sep, command = spec.partition("=")
    if not sep or not name or not command.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {spec!r}")
    return Program(name=name, argv=tuple(shlex.split(command)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run programs, restart any that exits, Ctrl-C stops all.")
    parser.add_argument("programs", nargs="+", type=_parse_program, metavar="NAME=COMMAND")
    parser.add_argument("--first-backoff", type=float, default=Backoff.first_s)
    parser.add_argument("--backoff-factor", type=float, default=Backoff.factor)
    parser.add_argument("--max-backoff", type=float, default=Backoff.max_s)
    parser.add_argument("--healthy-after", type=float, default=Backoff.healthy_after_s)
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    parser.add_argument(
        "--stop-last", action="append", default=[], metavar="NAME", help="stop after the rest"
    )
    args = parser.parse_args(argv)
    programs = [replace(p, stop_last=p.name in args.stop_last) for p in args.programs]
    supervisor = Supervisor(
        programs,
        backoff=Backoff(args.first_backoff, args.backoff_factor, args.max_backoff, args.healthy_after),
        stop_timeout_s=args.stop_timeout,
    )
    install_stop_signals(supervisor)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
