"""The virtual phone's `tcp:<port>` service over the real ADB protocol, through devices/adb.py's
open_stream: the phone's own loopback (one per phone), refusals as adbd refuses, and the stock profile."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread
from devices.virtual.profile import (
    PhoneProfile,
    ProfileError,
    TermuxProfile,
    profile_from_dict,
    stock_android,
)
from tests.virtual.conftest import by_serial, connect, wait_for


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        tag = self.server.tag  # type: ignore[attr-defined]
        self.server.connections += 1  # type: ignore[attr-defined]
        self.request.sendall(tag)
        while data := self.request.recv(65536):
            if data == b"close-now":
                return
            self.request.sendall(data)
        self.server.saw_eof.set()  # type: ignore[attr-defined]


class EchoServer(socketserver.ThreadingTCPServer):
    """A host TCP server standing in for a program on a phone: greets with its tag, then echoes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tag: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.tag = tag
        self.connections = 0
        self.saw_eof = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def listen_on_phone(lab: LabThread, serial: str, phone_port: int, host_port: int) -> None:
    """What a program on the phone does to listen on loopback port `phone_port` (serve.py's bind)."""
    registry = lab.lab.phone(serial).loopback_dir
    registry.mkdir(parents=True, exist_ok=True)
    (registry / str(phone_port)).write_text(f"{host_port}\n")


@pytest.fixture(scope="module")
def lab(start_lab, keys_file: Path) -> LabThread:
    return start_lab([PhoneProfile(serial="vt-tcp-a"), stock_android(serial="vt-tcp-b")], keys_file=keys_file)


@pytest.fixture(scope="module")
def echoes(lab: LabThread) -> Iterator[tuple[EchoServer, EchoServer]]:
    a, b = EchoServer(b"A:"), EchoServer(b"B:")
    listen_on_phone(lab, "vt-tcp-a", 9000, a.port)
    listen_on_phone(lab, "vt-tcp-b", 9000, b.port)  # the same phone port on another phone
    yield a, b
    a.stop()
    b.stop()


def read_exactly(stream: adb.DeviceStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        assert chunk, f"stream ended after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_each_phone_has_its_own_loopback(lab: LabThread, echoes, identity: AdbIdentity) -> None:
    for serial, tag in (("vt-tcp-a", b"A:"), ("vt-tcp-b", b"B:")):
        with connect(by_serial(lab, serial), identity) as conn, conn.open_stream("tcp:9000") as stream:
            assert read_exactly(stream, 2) == tag


def test_bytes_cross_both_ways_intact(lab: LabThread, echoes, identity: AdbIdentity) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 11)  # several WRTEs each way
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn:
        with conn.open_stream("tcp:9000:localhost", timeout_s=30) as stream:
            assert read_exactly(stream, 2) == b"A:"
            received = bytearray()

            def reader() -> None:
                received.extend(read_exactly(stream, len(payload)))

            # sendall and recv share the connection: feed it from this thread, drain it afterwards
            # (the echo sends back while we send; DeviceStream buffers what arrives meanwhile)
            stream.sendall(payload)
            reader()
            assert bytes(received) == payload
        assert conn.shell("echo after").strip() == "after"  # the connection outlives its stream


def test_closing_either_side_reaches_the_other(lab: LabThread, echoes, identity: AdbIdentity) -> None:
    a, _ = echoes
    a.saw_eof.clear()
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn:
        stream = conn.open_stream("tcp:9000")
        assert read_exactly(stream, 2) == b"A:"
        stream.close()  # our CLSE: the program sees end of file
        assert a.saw_eof.wait(10)
        stream = conn.open_stream("tcp:9000")
        stream.sendall(b"close-now")  # the program closes: we read end of stream
        assert read_exactly(stream, 2) == b"A:"
        assert wait_for(lambda: stream.recv(10) == b"", what="end of stream")
        with pytest.raises(adb.StreamLost):
            stream.sendall(b"more")
        stream.close()
        assert conn.shell("echo ok").strip() == "ok"


@pytest.mark.parametrize("service", ["tcp:9001", "tcp:9000:10.0.0.1", "tcp:0", "tcp:70000", "tcp:abc"])
def test_refused_like_adbd_when_nothing_listens(
    lab: LabThread, echoes, identity: AdbIdentity, service: str
) -> None:
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn:
        with pytest.raises(adb.StreamRefused) as refused:
            conn.open_stream(service)
        assert refused.value.service == service
        assert conn.shell("echo still here").strip() == "still here"


def test_a_stale_port_entry_is_refused(lab: LabThread, identity: AdbIdentity) -> None:
    with socket.socket() as probe:  # a port nobody listens on any more
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    listen_on_phone(lab, "vt-tcp-a", 9100, dead)
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn, pytest.raises(adb.StreamRefused):
        conn.open_stream("tcp:9100")


def test_recv_timeout_is_harmless_and_a_timeout_error(lab: LabThread, echoes, identity: AdbIdentity) -> None:
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn, conn.open_stream("tcp:9000") as stream:
        assert read_exactly(stream, 2) == b"A:"
        stream.settimeout(0.2)
        with pytest.raises(TimeoutError) as timed_out:
            stream.recv(10)
        assert isinstance(timed_out.value, adb.StreamTimeout)
        stream.settimeout(10)
        stream.sendall(b"ping")
        assert read_exactly(stream, 4) == b"ping"  # nothing was lost by the timeout


def test_a_dropped_connection_is_stream_lost(lab: LabThread, echoes, identity: AdbIdentity) -> None:
    conn = connect(by_serial(lab, "vt-tcp-a"), identity)
    stream = conn.open_stream("tcp:9000")
    assert read_exactly(stream, 2) == b"A:"
    phone = lab.lab.phone("vt-tcp-a")
    lab.call(lambda _: _abort_all(phone))
    with pytest.raises(adb.StreamLost) as lost:
        stream.recv(10)
        stream.recv(10)
    assert isinstance(lost.value, ConnectionError) and isinstance(lost.value, adb.DeviceOffline)
    assert conn.closed


async def _abort_all(phone) -> None:
    for connection in list(phone._connections):
        connection.abort()


def test_open_stream_validates_the_service_name(lab: LabThread, identity: AdbIdentity) -> None:
    with connect(by_serial(lab, "vt-tcp-a"), identity) as conn:
        for bad in ("", "tcp:1\x00shell:rm", "x" * 2000, "tcp:1\n"):
            with pytest.raises(ValueError):
                conn.open_stream(bad)


# --- the stock profile -----------------------------------------------------------------------------
def test_a_stock_phone_runs_no_python_and_lists_termux(lab: LabThread, identity: AdbIdentity) -> None:
    with connect(by_serial(lab, "vt-tcp-b"), identity) as stock:
        out = stock.shell("python3 -c 'print(1)'; echo status=$?")
        assert out == "/system/bin/sh: python3: inaccessible or not found\nstatus=127\n"
        out = stock.shell("/data/data/com.termux/files/usr/bin/python -V; echo status=$?")
        assert out.endswith("inaccessible or not found\nstatus=127\n")
        packages = stock.shell("pm list packages").split()
        assert "package:com.termux" in packages and "package:com.android.settings" in packages
        assert stock.shell("pm list packages -3").split() == ["package:com.termux"]
        assert "package:com.termux" not in stock.shell("pm list packages -s").split()
        assert stock.shell("pm list packages termux").split() == ["package:com.termux"]
        assert stock.shell("pm list packages -f termux").startswith("package:/data/app/")
        # the app's home is out of the shell's reach, as on a phone
        assert "Permission denied" in stock.shell("ls /data/data/com.termux/files/home")
    with connect(by_serial(lab, "vt-tcp-a"), identity) as rooted:
        assert "package:com.termux" not in rooted.shell("pm list packages").split()
        assert rooted.shell("python3 -c 'print(6 * 7)'").strip() == "42"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"termux": {"agent_port": 0}}, "agent_port"),
        ({"termux": {"agent_secret": "short"}}, "agent_secret"),
        ({"termux": {"agent_secret": "has spaces in the secret"}}, "agent_secret"),
        ({"termux": {"installed": "yes"}}, "expected bool"),
        ({"stock": 1}, "expected bool"),
    ],
)
def test_stock_profile_errors_are_clear(entry: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(entry)


def test_stock_profile_from_json() -> None:
    profile = profile_from_dict({"stock": True, "termux": {"installed": True, "agent_port": 7100}})
    assert profile.stock and profile.termux == TermuxProfile(installed=True, agent_port=7100)
    assert stock_android().termux.installed and not PhoneProfile().termux.installed
