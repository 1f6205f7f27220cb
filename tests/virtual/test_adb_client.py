"""devices/adb.py (adb-shell underneath) against virtual phones over real sockets."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from pathlib import Path

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread, VirtualLab
from devices.virtual.profile import AvailabilityProfile, BatteryProfile, FaultProfile, PhoneProfile
from tests.virtual.conftest import by_serial, connect

MAIN = PhoneProfile(serial="vt-main", model="Pixel 7", cores=8, ram_mb=8192, battery=BatteryProfile(level=64))
# group 1 of 2 with a huge period: offline for the whole test run
OFFLINE = PhoneProfile(
    serial="vt-offline",
    availability=AvailabilityProfile(kind="alternating", group=1, n_groups=2, period_s=1e9),
)
FAULTY = PhoneProfile(serial="vt-faulty", model="moto g(30)")
TOGGLE = PhoneProfile(serial="vt-toggle")


@pytest.fixture(scope="module")
def lab(start_lab, keys_file: Path) -> LabThread:
    return start_lab([MAIN, OFFLINE, FAULTY, TOGGLE], keys_file=keys_file)


@pytest.fixture
def phone(lab: LabThread, identity: AdbIdentity):
    with connect(by_serial(lab, "vt-main"), identity) as connection:
        yield connection


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- authentication ---------------------------------------------------------------------------------
def test_authorized_key_connects(phone: adb.AdbConnection) -> None:
    assert phone.shell("getprop ro.product.model") == "Pixel 7\n"


def test_unknown_key_is_unauthorized_not_offline(lab: LabThread, stranger: AdbIdentity) -> None:
    started = time.monotonic()
    with pytest.raises(adb.DeviceUnauthorized) as caught:
        connect(by_serial(lab, "vt-main"), stranger)
    assert "accept" in caught.value.message or "allow" in caught.value.message.lower()
    assert time.monotonic() - started < 10  # the phone's silence ends as "unauthorized", not a hang


def test_accept_new_keys_mode_authorizes_and_remembers(start_lab, stranger: AdbIdentity) -> None:
    lab = start_lab([PhoneProfile(serial="vt-accepting")], keys_file=None, accept_new_keys=True)
    endpoint = lab.endpoints[0]
    with connect(endpoint, stranger) as first:
        assert first.shell("echo hello") == "hello\n"
    accepted = endpoint.sandbox.parent / ".accepted_keys" / "vt-accepting"
    assert stranger.public_key.split()[0] in accepted.read_text()
    # The second time the signature alone suffices: switch acceptance off and connect again.
    lab.call(lambda lab_: _set_accept(lab_, False))
    with connect(endpoint, stranger) as second:
        assert second.shell("echo again") == "again\n"


async def _set_accept(lab: VirtualLab, value: bool) -> None:
    lab.phones[0]._accept_new_keys = value


# --- shell output -------------------------------------------------------------------------------------
def test_getprop_formats(phone: adb.AdbConnection) -> None:
    assert phone.run("getprop ro.build.version.sdk") == "34\n"
    assert phone.run("getprop ro.product.manufacturer") == "Google\n"
    assert phone.run("getprop no.such.property") == "\n"
    listing = phone.run("getprop")
    assert "[ro.product.model]: [Pixel 7]\n" in listing
    assert all(re.fullmatch(r"\[[^\]]+\]: \[.*\]", line) for line in listing.splitlines())


def test_dumpsys_battery_format(phone: adb.AdbConnection) -> None:
    text = phone.run("dumpsys battery")
    lines = text.splitlines()
    assert lines[0] == "Current Battery Service state:"
    fields = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert {"AC powered", "USB powered", "status", "health", "level", "scale", "temperature"} <= set(fields)
    assert int(fields["level"]) in (63, 64)
    assert fields["status"] == "3" and fields["USB powered"] == "false"
    assert fields["scale"] == "100" and fields["technology"] == "Li-ion"


def test_proc_and_sys_files(phone: adb.AdbConnection) -> None:
    meminfo = phone.run("cat /proc/meminfo")
    total_kb = int(re.search(r"^MemTotal:\s+(\d+) kB$", meminfo, re.M).group(1))  # type: ignore[union-attr]
    assert 7_000_000 < total_kb < 8192 * 1024
    assert phone.run("cat /sys/devices/system/cpu/possible") == "0-7\n"
    assert phone.run("nproc") == "8\n"
    assert phone.run("cat /proc/cpuinfo").count("processor\t:") == 8


def test_files_and_status_commands(phone: adb.AdbConnection) -> None:
    phone.run("rm -rf /data/local/tmp/t && mkdir -p /data/local/tmp/t/sub")
    assert phone.run("echo 'a  b' \"c\" > /data/local/tmp/t/f.txt; cat /data/local/tmp/t/f.txt") == "a  b c\n"
    assert phone.run("ls /data/local/tmp/t") == "f.txt\nsub\n"
    digest = hashlib.sha256(b"a  b c\n").hexdigest()
    assert phone.run("sha256sum /data/local/tmp/t/f.txt") == f"{digest}  /data/local/tmp/t/f.txt\n"
    assert phone.shell("false; echo $?") == "1\n"
    assert phone.shell("false && echo no; true && echo yes") == "yes\n"
    assert phone.run("df").startswith("Filesystem")
    with pytest.raises(adb.CommandFailed) as caught:
        phone.run("mkdir /data/local/tmp/t")
    assert caught.value.exit_code == 1 and "File exists" in caught.value.output


def test_unknown_command_is_127(phone: adb.AdbConnection) -> None:
    assert (
        phone.shell("frobnicate --now; echo $?")
        == "/system/bin/sh: frobnicate: inaccessible or not found\n127\n"
    )
    with pytest.raises(adb.CommandFailed) as caught:
        phone.run("frobnicate")
    assert caught.value.exit_code == 127


# --- sandbox -----------------------------------------------------------------------------------------
def test_path_traversal_refused(lab: LabThread, phone: adb.AdbConnection, tmp_path: Path) -> None:
    for path in ("/data/local/tmp/../../../etc/passwd", "/etc/passwd", "../../../../etc/hostname"):
        output = phone.shell(f"cat {adb.quote(path)}; echo $?")
        assert output == f"cat: {path}: Permission denied\n1\n"
    outside = tmp_path / "escaped.txt"
    source = tmp_path / "payload.txt"
    source.write_text("x")
    escape = "/data/local/tmp/../../.." + str(outside)
    with pytest.raises(adb.TransferFailed):
        phone.push(source, escape)
    assert not outside.exists()
    with pytest.raises(adb.TransferFailed):
        phone.pull("/data/local/tmp/../../../etc/passwd", tmp_path / "passwd")
    assert phone.stat("/etc/passwd") is None


def test_symlink_out_of_sandbox_refused(lab: LabThread, phone: adb.AdbConnection) -> None:
    sandbox = by_serial(lab, "vt-main").sandbox
    link = sandbox / "data" / "local" / "tmp" / "escape"
    if not link.is_symlink():
        os.symlink("/etc", link)
    assert phone.shell("cat /data/local/tmp/escape/hostname; echo $?").endswith("Permission denied\n1\n")
    assert "Permission denied" in phone.shell("ls /data/local/tmp/escape")


# --- streaming ----------------------------------------------------------------------------------------
STREAMING_PROGRAM = """
import os, sys, time
print("first", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]):   # the test creates it only after it has seen "first"
    if time.monotonic() > deadline:
        print("gave up waiting")
        sys.exit(3)
    time.sleep(0.01)
print("second")
print("third", flush=True)
"""


def test_stream_lines_yields_lines_as_produced(
    lab: LabThread, phone: adb.AdbConnection, identity: AdbIdentity, tmp_path: Path
) -> None:
    program = tmp_path / "stream.py"
    program.write_text(STREAMING_PROGRAM)
    phone.push(program, "/data/local/tmp/stream.py")
    phone.run("rm -f /data/local/tmp/go")
    lines = phone.stream_lines(
        "python3 /data/local/tmp/stream.py /data/local/tmp/go; echo status=$?", timeout_s=90
    )
    assert next(lines) == "first"  # while the program is still blocked, waiting for us
    with connect(by_serial(lab, "vt-main"), identity) as other:
        other.run("touch /data/local/tmp/go")
    assert list(lines) == ["second", "third", "status=0"]


# --- transfers ----------------------------------------------------------------------------------------
def test_push_and_pull_5mb_intact(phone: adb.AdbConnection, tmp_path: Path) -> None:
    source = tmp_path / "five.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    reports: list[tuple[int, int]] = []
    sent = phone.push(
        source, "/data/local/tmp/five.bin", progress=lambda done, total: reports.append((done, total))
    )
    assert sent == source.stat().st_size
    assert reports[-1] == (sent, sent) and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert phone.run("sha256sum /data/local/tmp/five.bin").split()[0] == sha256(source)
    back = tmp_path / "back.bin"
    pulled: list[int] = []
    assert (
        phone.pull("/data/local/tmp/five.bin", back, progress=lambda done, total: pulled.append(done)) == sent
    )
    assert sha256(back) == sha256(source) and pulled[-1] == sent
    remote = phone.stat("/data/local/tmp/five.bin")
    assert remote is not None and remote.size == sent and not remote.is_dir
    assert phone.stat("/data/local/tmp/missing.bin") is None


def test_pull_of_missing_file_fails_and_connection_stays_usable(
    phone: adb.AdbConnection, tmp_path: Path
) -> None:
    with pytest.raises(adb.TransferFailed) as caught:
        phone.pull("/data/local/tmp/nothing-here", tmp_path / "x")
    assert "No such file" in caught.value.message
    assert not (tmp_path / "x").exists()
    assert phone.run("echo still-here") == "still-here\n"


def test_several_files_go_both_ways_over_one_sync_stream(phone: adb.AdbConnection, tmp_path: Path) -> None:
    sources = []
    for index, size in enumerate((0, 10, 300_000)):
        source = tmp_path / f"f{index}.bin"
        source.write_bytes(os.urandom(size))
        sources.append(source)
    remotes = [f"/data/local/tmp/batch-{s.name}" for s in sources]
    totals: list[tuple[int, int]] = []
    sent = phone.push_files(
        list(zip(sources, remotes, strict=True)), progress=lambda d, t: totals.append((d, t))
    )
    assert sent == 300_010 and totals[-1] == (sent, sent)
    backs = [tmp_path / f"back-{s.name}" for s in sources]
    assert phone.pull_files(list(zip(remotes, backs, strict=True)), max_bytes=300_000) == sent
    assert [sha256(b) for b in backs] == [sha256(s) for s in sources]


def test_pull_files_checks_every_file_before_fetching_any(phone: adb.AdbConnection, tmp_path: Path) -> None:
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"s" * 100)
    big.write_bytes(b"b" * 5000)
    phone.push_files([(small, "/data/local/tmp/small.bin"), (big, "/data/local/tmp/big.bin")])
    local_small, local_big = tmp_path / "got-small", tmp_path / "got-big"
    files = [("/data/local/tmp/small.bin", local_small), ("/data/local/tmp/big.bin", local_big)]
    with pytest.raises(adb.RemoteFileTooLarge) as too_large:
        phone.pull_files(files, max_bytes=4999)
    assert too_large.value.remote == "/data/local/tmp/big.bin" and too_large.value.size == 5000
    with pytest.raises(adb.RemoteFileMissing) as missing:
        phone.pull_files([*files[:1], ("/data/local/tmp/absent.bin", tmp_path / "absent")])
    assert missing.value.remote == "/data/local/tmp/absent.bin"
    assert isinstance(missing.value, adb.TransferFailed)
    assert not local_small.exists() and not local_big.exists()  # nothing written, not even the good one
    assert not list(tmp_path.glob(".*.partial"))
    assert phone.run("echo still-here") == "still-here\n"
    assert phone.pull_files(files, max_bytes=5000) == 5100


def test_drop_mid_push_fails_and_phone_serves_next_connection(
    lab: LabThread, identity: AdbIdentity, tmp_path: Path
) -> None:
    endpoint = by_serial(lab, "vt-faulty")
    source = tmp_path / "drop.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))
    lab.call(lambda lab_: _set_faults(lab_, "vt-faulty", FaultProfile(drop_transfer_p=1.0)))
    try:
        with connect(endpoint, identity) as connection, pytest.raises(adb.TransferFailed):
            connection.push(source, "/data/local/tmp/drop.bin")
    finally:
        lab.call(lambda lab_: _set_faults(lab_, "vt-faulty", FaultProfile()))
    with connect(endpoint, identity) as again:
        assert again.run("ls /data/local/tmp") == ""  # no half-written file was left behind
        again.push(source, "/data/local/tmp/drop.bin")
        assert again.run("sha256sum /data/local/tmp/drop.bin").split()[0] == sha256(source)


async def _set_faults(lab: VirtualLab, serial: str, faults: FaultProfile) -> None:
    lab.phone(serial).faults.profile = faults


# --- availability -------------------------------------------------------------------------------------
def test_offline_phone_is_device_offline(lab: LabThread, identity: AdbIdentity) -> None:
    with pytest.raises(adb.DeviceOffline):
        connect(by_serial(lab, "vt-offline"), identity)


def test_phone_going_offline_drops_connection_and_refuses_new_ones(
    lab: LabThread, identity: AdbIdentity
) -> None:
    endpoint = by_serial(lab, "vt-toggle")
    connection = connect(endpoint, identity)
    assert connection.run("echo up") == "up\n"
    lab.call(lambda lab_: _force(lab_, "vt-toggle", False))
    try:
        with pytest.raises(adb.DeviceOffline):
            connection.shell("echo still there?")
        with pytest.raises(adb.DeviceOffline):
            connect(endpoint, identity)
    finally:
        lab.call(lambda lab_: _force(lab_, "vt-toggle", None))
    with connect(endpoint, identity) as back:
        assert back.run("echo back") == "back\n"


async def _force(lab: VirtualLab, serial: str, online: bool | None) -> None:
    phone = lab.phone(serial)
    phone.forced_online = online
    await phone.apply_availability()


def test_closed_connection_raises_offline(phone: adb.AdbConnection) -> None:
    phone.close()
    phone.close()  # idempotent
    with pytest.raises(adb.DeviceOffline):
        phone.run("echo x")


def test_target_validation() -> None:
    assert adb.Target("tcp", "127.0.0.1:15555").host_port == ("127.0.0.1", 15555)
    for bad in ("127.0.0.1", "host:99999", "a b:1", ""):
        with pytest.raises(ValueError):
            adb.Target("tcp", bad)
    with pytest.raises(ValueError):
        adb.Target("usb", "serial; rm -rf /")
    assert adb.quote("it's") == "'it'\"'\"'s'"


def test_command_drop_bandwidth_and_stall_faults(
    lab: LabThread, identity: AdbIdentity, tmp_path: Path
) -> None:
    endpoint = by_serial(lab, "vt-faulty")
    try:
        lab.call(
            lambda lab_: _set_faults(
                lab_, "vt-faulty", FaultProfile(drop_command_p=1.0, drop_command_window_s=0.2)
            )
        )
        with connect(endpoint, identity) as connection, pytest.raises(adb.DeviceOffline):
            connection.run("echo never seen")

        lab.call(lambda lab_: _set_faults(lab_, "vt-faulty", FaultProfile(stall_p=1.0, stall_s=0.5)))
        with connect(endpoint, identity) as connection:
            started = time.monotonic()
            assert connection.run("echo slow") == "slow\n"
            assert time.monotonic() - started >= 0.5

        source = tmp_path / "two.bin"
        source.write_bytes(os.urandom(2 * 1024 * 1024))
        lab.call(lambda lab_: _set_faults(lab_, "vt-faulty", FaultProfile(bandwidth_bps=4 * 1024 * 1024)))
        with connect(endpoint, identity) as connection:  # the link limit applies from connection time
            started = time.monotonic()
            connection.push(source, "/data/local/tmp/two.bin")
            assert time.monotonic() - started >= 0.4  # 2 MiB at 4 MiB/s, less the initial burst
            assert connection.run("sha256sum /data/local/tmp/two.bin").split()[0] == sha256(source)
    finally:
        lab.call(lambda lab_: _set_faults(lab_, "vt-faulty", FaultProfile()))


def test_timeouts_are_device_timeout(lab: LabThread, identity: AdbIdentity) -> None:
    with connect(by_serial(lab, "vt-main"), identity) as connection:
        started = time.monotonic()
        with pytest.raises(adb.DeviceTimeout):
            connection.run("sleep 30", timeout_s=0.5)
        assert time.monotonic() - started < 10
        with pytest.raises(adb.DeviceOffline):  # the connection's state is unknown: it was closed
            connection.run("echo x")
    with connect(by_serial(lab, "vt-main"), identity) as connection:
        lines = connection.stream_lines("echo one; sleep 30; echo two", timeout_s=0.5)
        assert next(lines) == "one"
        with pytest.raises(adb.DeviceTimeout):
            next(lines)


def test_silent_listener_is_device_timeout(identity: AdbIdentity) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(adb.DeviceTimeout):
            adb.connect(adb.Target("tcp", address), identity=identity, timeout_s=0.5)


def test_nothing_listening_is_device_offline(identity: AdbIdentity) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(adb.DeviceOffline):
        adb.connect(adb.Target("tcp", f"127.0.0.1:{port}"), identity=identity, timeout_s=2)


def test_usb_without_libusb_is_a_clear_error(identity: AdbIdentity) -> None:
    from adb_shell import adb_device

    if getattr(adb_device, "UsbTransport", None) is not None:
        pytest.skip("adb-shell's USB transport is installed here")
    with pytest.raises(adb.AdbError, match="libusb"):
        adb.connect(adb.Target("usb", "0123456789ABCDEF"), identity=identity)


@pytest.mark.parametrize("version", [0x01000000, 0x01000001])
def test_both_protocol_versions(lab: LabThread, identity: AdbIdentity, tmp_path: Path, version: int) -> None:
    """0x01000000 (an old adbd) checksums every payload, 0x01000001 does not; both must work both ways."""

    async def set_version(lab_: VirtualLab) -> None:
        lab_.phone("vt-faulty").protocol_version = version

    lab.call(set_version)
    try:
        source = tmp_path / "v.bin"
        source.write_bytes(os.urandom(3 * 1024 * 1024))
        with connect(by_serial(lab, "vt-faulty"), identity) as connection:
            assert connection._device._io_manager.version == version
            connection.push(source, "/data/local/tmp/v.bin")
            connection.pull("/data/local/tmp/v.bin", tmp_path / "back.bin")
            assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
            assert connection.run("echo checked") == "checked\n"
    finally:

        async def restore(lab_: VirtualLab) -> None:
            lab_.phone("vt-faulty").protocol_version = 0x01000001

        lab.call(restore)
