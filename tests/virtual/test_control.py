"""The lab's control channel (devices/virtual/control.py) over its real Unix socket, with phones driven over
the real ADB protocol: the record of agent runs (starts, exits, overlaps), armed faults (a dropped
transfer, a stalled run), forcing a phone off and handing it back, and requests it must refuse."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.control import MAX_REQUEST_BYTES, RUN_LOG_NAME, attach_control, request
from devices.virtual.faults import FaultInjector
from devices.virtual.lab import LabThread
from devices.virtual.profile import FaultProfile, PhoneProfile
from tests.virtual.conftest import connect, free_base_port, wait_for

REPO = Path(__file__).resolve().parents[2]

# Runs until the host creates its stop file (argv[2]) -- a phone's agent that is "still training".
WAITING_PROGRAM = """
import os, sys, time
open(sys.argv[1], "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.02)
"""
EXIT_PROGRAM = "import sys\nopen(sys.argv[1], 'w').close()\nsys.exit(3)\n"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ctl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab(start_lab, keys_file: Path, socket_dir: Path) -> tuple[LabThread, Path]:
    lab = start_lab([PhoneProfile(serial="ctl-a"), PhoneProfile(serial="ctl-b")], keys_file=keys_file)
    sock = socket_dir / "lab.sock"
    attach_control(lab, sock)
    return lab, sock


def push_programs(lab: LabThread, identity: AdbIdentity, tmp_path: Path) -> None:
    for endpoint in lab.endpoints:
        with connect(endpoint, identity) as phone:
            for name, text in (("wait.py", WAITING_PROGRAM), ("exit.py", EXIT_PROGRAM)):
                (tmp_path / name).write_text(text)
                phone.push(tmp_path / name, f"/data/local/tmp/{name}")


def phone_file(lab: LabThread, index: int, name: str) -> Path:
    return lab.endpoints[index].sandbox / "data" / "local" / "tmp" / name


def status(sock: Path) -> dict[str, Any]:
    answer = request(sock, {"op": "status"})
    assert answer["ok"], answer
    return answer


def run_log(lab: LabThread) -> list[dict[str, Any]]:
    path = Path(lab.lab.config.lab_dir).resolve() / RUN_LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_agent_run_is_recorded_with_its_start_exit_and_status(
    lab: tuple[LabThread, Path], identity: AdbIdentity, tmp_path: Path
) -> None:
    thread, sock = lab
    push_programs(thread, identity, tmp_path)
    with connect(thread.endpoints[0], identity) as phone:
        output = phone.shell("python3 /data/local/tmp/exit.py /data/local/tmp/ran; echo status=$?")
    assert "status=3" in output
    events = [e for e in run_log(thread) if e["phone"] == "ctl-a"]
    assert [e["event"] for e in events] == ["start", "exit"]
    start, end = events
    assert start["run"] == end["run"] and start["alive"] == []
    assert start["args"][0].endswith("exit.py")
    assert end["status"] == 3 and end["t"] >= start["t"]
    phones = status(sock)["phones"]
    assert phones["ctl-a"]["runs"] == 1 and phones["ctl-a"]["overlaps"] == 0
    assert phones["ctl-b"]["runs"] == 0


def test_two_agents_alive_at_once_on_one_phone_count_as_an_overlap(
    lab: tuple[LabThread, Path], identity: AdbIdentity, tmp_path: Path
) -> None:
    thread, sock = lab
    push_programs(thread, identity, tmp_path)
    errors: list[BaseException] = []

    def run(index: int, marker: str) -> None:
        try:
            with connect(thread.endpoints[index], identity) as phone:
                phone.shell(f"python3 /data/local/tmp/wait.py /data/local/tmp/{marker} /data/local/tmp/stop")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # Two runs on phone A, one on phone B at the same time: only A has two agents at once.
    threads = [threading.Thread(target=run, args=args) for args in ((0, "a1"), (0, "a2"), (1, "b1"))]
    for t in threads:
        t.start()
    wait_for(
        lambda: all(phone_file(thread, i, m).exists() for i, m in ((0, "a1"), (0, "a2"), (1, "b1"))),
        what="all three programs to run",
    )
    phones = status(sock)["phones"]
    assert phones["ctl-a"]["agents_running"] == 2 and phones["ctl-a"]["overlaps"] == 1
    assert phones["ctl-b"]["agents_running"] == 1 and phones["ctl-b"]["overlaps"] == 0
    for index in (0, 1):
        phone_file(thread, index, "stop").touch()
    for t in threads:
        t.join(30)
    assert not errors
    wait_for(lambda: status(sock)["runs"]["alive"] == 0, what="every run to exit")
    assert status(sock)["runs"] == {"started": 3, "alive": 0, "overlaps": 1}
    second_start = [e for e in run_log(thread) if e["phone"] == "ctl-a" and e["event"] == "start"][1]
    assert len(second_start["alive"]) == 1  # the start line names the run it overlapped


def test_a_stalled_run_starts_late_and_a_closed_stream_cancels_it_before_it_starts(
    lab: tuple[LabThread, Path], identity: AdbIdentity, tmp_path: Path
) -> None:
    thread, sock = lab
    push_programs(thread, identity, tmp_path)
    assert request(sock, {"op": "stall_run", "phone": "ctl-a", "seconds": 0.6})["ok"]
    with connect(thread.endpoints[0], identity) as phone:
        began = time.monotonic()
        phone.shell("python3 /data/local/tmp/exit.py /data/local/tmp/late")
        assert time.monotonic() - began >= 0.6
    assert phone_file(thread, 0, "late").exists()
    assert status(sock)["phones"]["ctl-a"]["stall_armed_s"] == 0  # one run only

    assert request(sock, {"op": "stall_run", "phone": "ctl-a", "seconds": 120})["ok"]
    with connect(thread.endpoints[0], identity) as phone, pytest.raises(adb.DeviceTimeout):
        phone.shell("python3 /data/local/tmp/exit.py /data/local/tmp/never", timeout_s=1)
    wait_for(lambda: status(sock)["runs"]["alive"] == 0, what="the stalled run to be cancelled")
    exits = [e for e in run_log(thread) if e["event"] == "exit"]
    assert [(e["status"], e["stalled_s"]) for e in exits] == [(3, 0.6), (None, 120.0)]
    assert not phone_file(thread, 0, "never").exists()


def test_a_phone_forced_off_refuses_connections_until_handed_back(
    lab: tuple[LabThread, Path], identity: AdbIdentity
) -> None:
    thread, sock = lab
    answer = request(sock, {"op": "online", "phone": "ctl-b", "online": False})
    assert answer == {"ok": True, "phone": "ctl-b", "online": False}
    with pytest.raises(adb.DeviceOffline):
        connect(thread.endpoints[1], identity)
    with connect(thread.endpoints[0], identity) as other:  # the other phone is untouched
        assert "hi" in other.shell("echo hi")
    assert request(sock, {"op": "online", "phone": "ctl-b", "online": None})["online"] is True
    with connect(thread.endpoints[1], identity) as phone:
        assert "back" in phone.shell("echo back")
    assert status(sock)["phones"]["ctl-b"]["forced_online"] is None


def test_an_armed_drop_breaks_the_next_transfer_only(
    lab: tuple[LabThread, Path], identity: AdbIdentity, tmp_path: Path
) -> None:
    thread, sock = lab
    payload = tmp_path / "model.bin"
    payload.write_bytes(random.Random(1).randbytes(300_000))  # several data blocks
    assert request(sock, {"op": "drop_transfer", "phone": "ctl-a"})["drops_armed"] == 1
    with connect(thread.endpoints[0], identity) as phone, pytest.raises(adb.AdbError):
        phone.push(payload, "/data/local/tmp/model.bin", timeout_s=20)
    assert not phone_file(thread, 0, "model.bin").exists()  # a dropped push leaves no file
    phones = status(sock)["phones"]
    assert phones["ctl-a"]["drops_armed"] == 0 and phones["ctl-a"]["drops_planned"] == 1
    with connect(thread.endpoints[0], identity) as phone:
        assert phone.push(payload, "/data/local/tmp/model.bin", timeout_s=20) == 300_000
    assert phone_file(thread, 0, "model.bin").read_bytes() == payload.read_bytes()


def test_bad_requests_get_their_reason_and_the_connection_goes_on(lab: tuple[LabThread, Path]) -> None:
    _thread, sock = lab
    lines = [
        b"not json",
        b"[1, 2]",
        b'{"op": "reboot", "phone": "ctl-a"}',
        b'{"op": "online", "phone": "nobody", "online": false}',
        b'{"op": "online", "phone": "ctl-a", "online": "yes"}',
        b'{"op": "online", "phone": "ctl-a"}',
        b'{"op": "stall_run", "phone": "ctl-a", "seconds": -1}',
        b'{"op": "stall_run", "phone": "ctl-a", "seconds": true}',
        b'{"op": "stall_run", "phone": "ctl-a", "seconds": 1e999}',
        b'{"op": "drop_transfer", "phone": 7}',
        b'{"op": "status"}',
    ]
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(sock))
        reader = client.makefile("rb")
        answers = []
        for line in lines:
            client.sendall(line + b"\n")
            answers.append(json.loads(reader.readline()))
        assert [a["ok"] for a in answers] == [False] * 10 + [True]
        errors = [a["error"] for a in answers[:10]]
        assert errors[0].startswith("not JSON")
        assert errors[1] == "a request is a JSON object"
        assert "unknown op 'reboot'" in errors[2]
        assert errors[3] == "no phone 'nobody' in this lab"
        assert errors[4] == errors[5] == "online must be true, false or null"
        assert "seconds must be in" in errors[6] and errors[7] == "seconds must be a number"
        assert "seconds must be in" in errors[8] and errors[9] == "phone must be a serial"

        client.sendall(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n")
        answer = json.loads(reader.readline())
        assert answer == {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes"}
        assert reader.readline() == b""  # and that connection is closed
    assert status(sock)["phones"]["ctl-a"]["forced_online"] is None  # nothing was changed


def test_the_socket_is_private_to_the_labs_user(lab: tuple[LabThread, Path]) -> None:
    _thread, sock = lab
    assert sock.stat().st_mode & 0o777 == 0o600


def test_an_armed_drop_does_not_shift_the_seeded_faults() -> None:
    profile = FaultProfile(drop_transfer_p=0.5, stall_p=0.5)
    armed, plain = FaultInjector(profile, random.Random(7)), FaultInjector(profile, random.Random(7))
    armed.arm_transfer_drop()
    first = armed.plan_transfer(10_000)
    assert first.drop_at_byte == 1  # after the first data block, whatever the odds said
    assert plain.plan_transfer(10_000).stall_at_byte == first.stall_at_byte
    assert [armed.plan_transfer(10_000) for _ in range(20)] == [
        plain.plan_transfer(10_000) for _ in range(20)
    ]
    assert (armed.armed_drops, armed.drops_planned) == (0, 1)


def test_the_lab_command_opens_the_channel_and_removes_it_at_exit(
    keys_file: Path, socket_dir: Path, tmp_path: Path
) -> None:
    sock = socket_dir / "cli.sock"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devices.virtual",
            "--phones",
            "2",
            "--base-port",
            str(free_base_port(2)),
            "--keys",
            str(keys_file),
            "--lab-dir",
            str(tmp_path / "lab"),
            "--no-zygote",
            "--control-socket",
            str(sock),
        ],  # fmt: skip
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == "READY":
                break
        assert f"CONTROL {sock}" in lines and lines[-1] == "READY"
        assert sorted(status(sock)["phones"]) == ["vphone-01", "vphone-02"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not sock.exists()
        assert (tmp_path / "lab" / RUN_LOG_NAME).exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
