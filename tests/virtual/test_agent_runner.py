"""Running the agent: the phone's python word starts a real child, through the zygote or a plain
subprocess, and both behave the same over ADB."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread, VirtualLab
from devices.virtual.profile import BatteryProfile, PhoneProfile
from devices.virtual.zygote import ZygoteRunner
from tests.virtual.conftest import connect, wait_for

REPORT_PROGRAM = """
import json, os, random, sys
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
    "slowdown": os.environ.get("FEDFLEET_SLOWDOWN"), "behaviour": os.environ.get("FEDFLEET_BEHAVIOUR"),
    "serial": os.environ.get("FEDFLEET_PHONE_SERIAL"), "omp": os.environ.get("OMP_NUM_THREADS"),
    "random": random.random(),
}), flush=True)
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[2]))
"""

FAILING_PROGRAM = "raise RuntimeError('boom')\n"

LONG_PROGRAM = """
import os, sys, time
with open(sys.argv[1], "w") as out:
    out.write(str(os.getpid()))
print("started", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

# Drains 1 %/min idle-free while training: enough to see, never enough to switch the phone off mid-test.
PROFILE = PhoneProfile(
    serial="vt-agent",
    speed_factor=2.5,
    behaviour="label_flip",
    battery=BatteryProfile(level=90, drain_idle_pct_per_min=0, drain_train_pct_per_min=60),
)


@pytest.fixture(scope="module", params=["zygote", "subprocess"])
def lab(request, start_lab, keys_file: Path) -> LabThread:
    return start_lab([PROFILE], keys_file=keys_file, use_zygote=request.param == "zygote")


@pytest.fixture
def phone(lab: LabThread, identity: AdbIdentity, tmp_path: Path):
    with connect(lab.endpoints[0], identity) as connection:
        for name, text in (
            ("report.py", REPORT_PROGRAM),
            ("fail.py", FAILING_PROGRAM),
            ("long.py", LONG_PROGRAM),
        ):
            (tmp_path / name).write_text(text)
            connection.push(tmp_path / name, f"/data/local/tmp/{name}")
        yield connection


def uses_zygote(lab: LabThread) -> bool:
    return isinstance(lab.lab.runner, ZygoteRunner)


def test_program_runs_in_sandbox_with_phone_environment(lab: LabThread, phone: adb.AdbConnection) -> None:
    output = phone.shell(
        "python3 /data/local/tmp/report.py /data/local/tmp/x 5; echo status=$?", timeout_s=120
    )
    lines = output.splitlines()
    report = json.loads(lines[0])
    sandbox = lab.endpoints[0].sandbox
    assert lines[1:] == ["to stderr", "status=5"]
    assert report["argv"] == [
        str(sandbox / "data/local/tmp/report.py"),
        str(sandbox / "data/local/tmp/x"),
        "5",
    ]
    assert report["cwd"] == str(sandbox)
    assert report["name"] == "__main__" and report["path0"] == str(sandbox / "data/local/tmp")
    assert report["slowdown"] == "2.5" and report["behaviour"] == "label_flip"
    assert report["serial"] == "vt-agent" and report["omp"] == "1"
    if uses_zygote(lab):
        assert lab.lab.runner.forked >= 1  # type: ignore[attr-defined]


def test_relative_program_after_cd_and_fresh_random_state(phone: adb.AdbConnection) -> None:
    first = phone.run("cd /data/local/tmp && python3 report.py y 0", timeout_s=120).splitlines()[0]
    second = phone.run("cd /data/local/tmp && python3 report.py y 0", timeout_s=120).splitlines()[0]
    assert json.loads(first)["random"] != json.loads(second)["random"]  # forked children are reseeded


def test_uncaught_exception_is_status_1_with_traceback(phone: adb.AdbConnection) -> None:
    with pytest.raises(adb.CommandFailed) as caught:
        phone.run("python3 /data/local/tmp/fail.py", timeout_s=120)
    assert caught.value.exit_code == 1
    assert "Traceback" in caught.value.output and "RuntimeError: boom" in caught.value.output


def test_interpreter_options_take_the_plain_path(phone: adb.AdbConnection) -> None:
    assert phone.run("python3 -c 'print(6 * 7)'", timeout_s=120) == "42\n"


def test_dropped_connection_kills_the_agent(
    lab: LabThread, phone: adb.AdbConnection, identity: AdbIdentity
) -> None:
    pid_file = lab.endpoints[0].sandbox / "data" / "local" / "tmp" / "long.pid"
    pid_file.unlink(missing_ok=True)
    lines = phone.stream_lines("python3 /data/local/tmp/long.py /data/local/tmp/long.pid", timeout_s=120)
    assert next(lines) == "started"
    pid = int(pid_file.read_text())
    assert process_alive(pid)
    set_level(lab, 80.0)
    wait_for(lambda: level(lab) < 80, what="the battery to drain while the agent trains")
    lines.close()  # leaving the stream early closes the connection: the phone must kill the program
    wait_for(lambda: not process_alive(pid), timeout_s=30, what=f"agent {pid} to be killed")
    with connect(lab.endpoints[0], identity) as again:
        assert again.run("echo next") == "next\n"
        # The next agent still starts: a dropped command must not take the zygote down with it.
        report = again.run("python3 /data/local/tmp/report.py /data/local/tmp/x 0", timeout_s=120)
        assert json.loads(report.splitlines()[0])["serial"] == "vt-agent"


def level(lab: LabThread) -> int:
    async def read(lab_: VirtualLab) -> int:
        return lab_.phones[0].battery_state().level

    return lab.call(read)


def set_level(lab: LabThread, value: float) -> None:
    async def write(lab_: VirtualLab) -> None:
        lab_.phones[0].battery.set_level(value)

    lab.call(write)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_pid_check_helper_sees_this_process() -> None:
    assert process_alive(os.getpid())


def test_a_warm_lab_imports_torch_before_any_agent_runs(start_lab, keys_file: Path) -> None:
    lab = start_lab([PhoneProfile(serial="vt-warm")], keys_file=keys_file, use_zygote=True, warm_zygote=True)
    runner = lab.lab.runner
    assert isinstance(runner, ZygoteRunner)
    wait_for(lambda: "torch" in runner.preloaded, timeout_s=120, what="the zygote to import torch")
    assert runner.forked == 0
