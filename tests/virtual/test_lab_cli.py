"""`python -m devices.virtual` and `manage.py virtual_lab` as processes: announce, serve, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity
from tests.virtual.conftest import free_base_port

REPO = Path(__file__).resolve().parents[2]


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def read_until_ready(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # blocks until the lab prints; EOF if it died
        if line.strip() == "READY":
            return lines
        lines.append(line.rstrip("\n"))
    raise AssertionError(f"exited {process.wait()} before READY: {lines} {process.stderr.read()}")  # type: ignore[union-attr]


@pytest.mark.parametrize("entry", ["module", "manage.py"])
def test_lab_process_announces_phones_and_stops_on_signal(
    entry: str, tmp_path: Path, keys_file: Path, identity: AdbIdentity
) -> None:
    base = free_base_port(2)
    args = [
        "--phones",
        "2",
        "--base-port",
        str(base),
        "--keys",
        str(keys_file),
        "--lab-dir",
        str(tmp_path / "lab"),
    ]
    prefix = (
        [sys.executable, "-m", "devices.virtual"]
        if entry == "module"
        else [sys.executable, "manage.py", "virtual_lab"]
    )
    env = dict(os.environ, FEDFLEET_DATA_DIR=str(tmp_path / "data"))
    process = start(prefix + args, env)
    try:
        lines = read_until_ready(process)
        assert [line.split()[:2] for line in lines] == [
            ["vphone-01", f"127.0.0.1:{base}"],
            ["vphone-02", f"127.0.0.1:{base + 1}"],
        ]
        assert lines[0].endswith("Pixel 7")
        with adb.connect(
            adb.Target("tcp", f"127.0.0.1:{base + 1}"), identity=identity, timeout_s=20
        ) as phone:
            assert phone.run("getprop ro.serialno") == "vphone-02\n"
        process.send_signal(signal.SIGTERM if entry == "module" else signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with pytest.raises(adb.DeviceOffline):
        adb.connect(adb.Target("tcp", f"127.0.0.1:{base}"), identity=identity, timeout_s=5)


def test_ports_in_adb_scan_range_are_refused(tmp_path: Path, keys_file: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "devices.virtual",
        "--phones",
        "3",
        "--base-port",
        "5554",
        "--keys",
        str(keys_file),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 2 and "5555-5585" in done.stderr and "READY" not in done.stdout


def test_default_keys_are_the_platform_key(tmp_path: Path) -> None:
    """Without --keys the phones trust <data dir>/adb/adbkey.pub, which is created if missing."""
    from devices.adb_identity import load_or_create_identity

    data = tmp_path / "data"
    base = free_base_port(1)
    env = dict(os.environ, FEDFLEET_DATA_DIR=str(data))
    process = start([sys.executable, "-m", "devices.virtual", "--phones", "1", "--base-port", str(base)], env)
    try:
        read_until_ready(process)
        platform = load_or_create_identity(data / "adb" / "adbkey")
        with adb.connect(adb.Target("tcp", f"127.0.0.1:{base}"), identity=platform, timeout_s=20) as phone:
            assert phone.run("echo trusted") == "trusted\n"
        assert (data / "virtual_lab" / "vphone-01" / "data" / "local" / "tmp").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=30)
