"""Background jobs in the virtual phone's shell, over the real ADB protocol: what the resident runtime
needs to keep `agent.pyz serve` running (`nohup CMD > log 2>&1 & echo $! > pidfile`, `kill`, `kill -0`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread
from devices.virtual.profile import PhoneProfile, stock_android
from tests.virtual.conftest import connect, wait_for


@pytest.fixture(scope="module")
def lab(start_lab, keys_file: Path) -> LabThread:
    return start_lab([PhoneProfile(serial="vt-jobs"), stock_android(serial="vt-stock")], keys_file=keys_file)


def test_a_background_job_outlives_its_shell_and_is_killed_by_pid(
    lab: LabThread, identity: AdbIdentity
) -> None:
    endpoint = lab.endpoints[0]
    program = "import time; print('started', flush=True); time.sleep(120)"
    with connect(endpoint, identity) as phone:
        phone.shell("mkdir -p /data/local/tmp/j")
        out = phone.shell(
            f'nohup python3 -c "{program}" > /data/local/tmp/j/log 2>&1 & echo $! > /data/local/tmp/j/pid;'
            " echo returned"
        )
        assert out.strip() == "returned"  # the list went on without waiting for the job
    with connect(endpoint, identity) as phone:  # a new connection: the first shell is long gone
        pid = phone.shell("cat /data/local/tmp/j/pid").strip()
        assert pid.isdigit()
        wait_for(lambda: "started" in phone.shell("cat /data/local/tmp/j/log"), what="the job's output")
        assert phone.shell(f"kill -0 {pid}; echo $?").strip() == "0"
        assert phone.shell(f"kill {pid}; echo $?").strip() == "0"
        assert phone.shell(f"kill -0 {pid}; echo $?").strip().splitlines() == [
            f"kill: {pid}: No such process",
            "1",
        ]
        assert phone.shell("kill -9 99999; echo $?").strip().endswith("1")
        assert "arguments must be process or job IDs" in phone.shell("kill nope")
        assert "unknown signal" in phone.shell("kill -HUP 1")
    phone_object = lab.lab.phone("vt-jobs")
    assert phone_object.job_pids == []


def test_background_builtins_and_syntax(lab: LabThread, identity: AdbIdentity) -> None:
    with connect(lab.endpoints[0], identity) as phone:
        assert phone.shell("echo [$!]").strip() == "[]"
        first = phone.shell("sleep 60 & echo $!").strip()
        assert first.isdigit() and lab.lab.phone("vt-jobs").job_alive(int(first))
        assert phone.shell(f"kill {first}; echo $?").strip() == "0"
        assert "syntax error" in phone.shell("& echo no")
        assert "usage: nohup" in phone.shell("nohup")


def test_a_stock_phone_cannot_background_python_either(lab: LabThread, identity: AdbIdentity) -> None:
    with connect(lab.endpoints[1], identity) as phone:
        phone.shell("nohup python3 -c 'print(1)' > /sdcard/out 2>&1 &")
        assert "inaccessible or not found" in wait_for(
            lambda: phone.shell("cat /sdcard/out"), what="the job's complaint"
        )
