"""config/supervisor.py, which keeps `make demo`'s processes up: real child processes are SIGKILLed, crash
in a loop, ignore SIGTERM; the supervisor runs as its own process and is stopped with a real SIGINT."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.supervisor import Backoff, describe_exit
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
# A long-running child: says who it is, then waits for a signal (SIGTERM ends it).
SERVE = "import os, signal; print('READY', os.getpid(), flush=True); signal.pause()"
# One that ignores SIGTERM, as a wedged process would.
STUBBORN = (
    "import os, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('READY', os.getpid(), flush=True); signal.pause()"
)
CRASH = "raise SystemExit(3)"


def program(name: str, code: str) -> str:
    return f"{name}={shlex.quote(sys.executable)} -c {shlex.quote(code)}"


class RunningSupervisor:
    """`python -m config.supervisor ...` with its output collected line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "config.supervisor", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def said(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in list(self.lines) if (m := re.search(pattern, line))]

    def wait_for(self, pattern: str, *, count: int = 1, timeout_s: float = 30) -> list[re.Match[str]]:
        def seen() -> list[re.Match[str]] | None:
            matches = self.said(pattern)
            if len(matches) >= count:
                return matches
            if self.process.poll() is not None:
                raise AssertionError(f"supervisor exited {self.process.returncode}:\n{self.output()}")
            return None

        try:
            return wait_until(seen, timeout_s=timeout_s, what=f"{pattern!r} x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} in:\n{self.output()}") from None

    def ready_pids(self, name: str) -> list[int]:
        return [int(m.group(1)) for m in self.said(rf" {name}\s+\| READY (\d+)$")]

    def interrupt(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        return self.process.wait(timeout=timeout_s)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def supervisors() -> Iterator[list[RunningSupervisor]]:
    started: list[RunningSupervisor] = []
    yield started
    for sup in started:
        if sup.process.poll() is None:
            sup.process.kill()
            sup.process.wait(timeout=10)


def test_backoff_grows_per_quick_failure_up_to_its_cap() -> None:
    backoff = Backoff(first_s=1, factor=2, max_s=5)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_exits_are_described_by_status_or_signal() -> None:
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_a_killed_process_is_restarted_the_others_keep_running_and_ctrl_c_stops_all(
    supervisors: list[RunningSupervisor],
) -> None:
    sup = RunningSupervisor("--first-backoff", "0.2", program("alpha", SERVE), program("beta", SERVE))
    supervisors.append(sup)
    sup.wait_for(r" alpha\s+\| READY \d+$")
    sup.wait_for(r" beta\s+\| READY \d+$")
    [alpha_pid], [beta_pid] = sup.ready_pids("alpha"), sup.ready_pids("beta")

    os.kill(alpha_pid, signal.SIGKILL)
    sup.wait_for(r"alpha killed by SIGKILL after [\d.]+ s: restart 1 in 0\.20 s")
    sup.wait_for(r"alpha restarted \(pid \d+, restart 1\)")
    sup.wait_for(r" alpha\s+\| READY \d+$", count=2)
    new_alpha_pid = sup.ready_pids("alpha")[1]
    assert new_alpha_pid != alpha_pid and alive(new_alpha_pid)
    assert sup.ready_pids("beta") == [beta_pid] and alive(beta_pid)  # beta was left alone

    assert sup.interrupt() == 0
    sup.wait_for("all stopped")
    assert not alive(new_alpha_pid) and not alive(beta_pid)
    assert sup.said(r"alpha stopped \(killed by SIGTERM\)") and sup.said(
        r"beta stopped \(killed by SIGTERM\)"
    )


def test_a_crash_loop_backs_off_and_counts_its_restarts(supervisors: list[RunningSupervisor]) -> None:
    sup = RunningSupervisor(
        "--first-backoff", "0.05", "--max-backoff", "0.4", program("flaky", CRASH), program("steady", SERVE)
    )
    supervisors.append(sup)
    matches = sup.wait_for(r"flaky exit status 3 after [\d.]+ s: restart (\d+) in ([\d.]+) s", count=5)
    restarts = [int(m.group(1)) for m in matches[:5]]
    delays = [float(m.group(2)) for m in matches[:5]]
    assert restarts == [1, 2, 3, 4, 5]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4]
    [steady_pid] = sup.ready_pids("steady")
    assert alive(steady_pid)
    assert sup.interrupt() == 0
    assert not alive(steady_pid)


def test_ctrl_c_while_a_restart_is_pending_stops_without_restarting(
    supervisors: list[RunningSupervisor],
) -> None:
    sup = RunningSupervisor(
        "--first-backoff", "60", "--max-backoff", "60", program("once", CRASH), program("steady", SERVE)
    )
    supervisors.append(sup)
    sup.wait_for(r"once exit status 3 after [\d.]+ s: restart 1 in 60\.00 s")
    sup.wait_for(r" steady\s+\| READY \d+$")
    assert sup.interrupt(timeout_s=15) == 0  # well before the 60 s backoff
    assert not sup.said("once restarted")


def test_a_process_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    supervisors: list[RunningSupervisor],
) -> None:
    sup = RunningSupervisor("--stop-timeout", "1", program("stubborn", STUBBORN))
    supervisors.append(sup)
    sup.wait_for(r" stubborn\s+\| READY \d+$")
    [pid] = sup.ready_pids("stubborn")
    assert sup.interrupt() == 0
    assert sup.said("stubborn did not stop within 1 s: SIGKILL")
    assert not alive(pid)


def test_stop_goes_in_reverse_start_order_and_stop_last_programs_go_after_the_rest(
    supervisors: list[RunningSupervisor],
) -> None:
    sup = RunningSupervisor(
        "--stop-last",
        "broker",
        program("broker", SERVE),
        program("worker", SERVE),
        program("web", SERVE),
    )
    supervisors.append(sup)
    for name in ("broker", "worker", "web"):
        sup.wait_for(rf" {name}\s+\| READY \d+$")
    assert sup.interrupt() == 0
    said = [line.split("| ", 1)[1] for line in sup.lines if " demo " in line]
    assert said.index("stopping web, worker") < said.index("web stopped (killed by SIGTERM)")
    assert said.index("worker stopped (killed by SIGTERM)") < said.index("stopping broker")
    assert said.index("stopping broker") < said.index("broker stopped (killed by SIGTERM)")


def test_the_command_line_refuses_a_program_without_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "config.supervisor", "nameonly"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "expected NAME=COMMAND" in result.stderr
