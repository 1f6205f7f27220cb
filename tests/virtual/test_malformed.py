"""Malformed input never takes a phone down: the offending connection is closed, the others go on."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread
from devices.virtual.packets import MAX_PAYLOAD, Command
from devices.virtual.profile import PhoneProfile
from tests.virtual.conftest import connect

CLOSE_TIMEOUT_S = 10.0


def header(
    command: int, arg0: int = 0, arg1: int = 0, length: int = 0, check: int = 0, magic: int | None = None
) -> bytes:
    return struct.pack(
        "<6I", command, arg0, arg1, length, check, command ^ 0xFFFFFFFF if magic is None else magic
    )


def cnxn(version: int = 0x01000001, payload: bytes = b"host::\0") -> bytes:
    return header(Command.CNXN, version, 4096, len(payload), sum(payload)) + payload


@pytest.fixture(scope="module")
def lab(start_lab, keys_file: Path) -> LabThread:
    return start_lab([PhoneProfile(serial="vt-robust")], keys_file=keys_file)


@pytest.fixture(scope="module")
def witness(lab: LabThread, identity: AdbIdentity) -> Iterator[adb.AdbConnection]:
    """An authorized connection open through every abuse: it must keep working."""
    with connect(lab.endpoints[0], identity) as connection:
        yield connection


def exchange(lab: LabThread, data: bytes, *, half_close: bool = True) -> bytes:
    """Send raw bytes; return everything the phone answered until it closed the connection."""
    endpoint = lab.endpoints[0]
    with socket.create_connection((endpoint.host, endpoint.port), timeout=CLOSE_TIMEOUT_S) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:  # closed by the phone: what we want (a timeout raises instead)
                return received
            received += chunk


def assert_phone_healthy(lab: LabThread, witness: adb.AdbConnection, identity: AdbIdentity) -> None:
    assert witness.run("echo alive") == "alive\n"
    with connect(lab.endpoints[0], identity) as fresh:
        assert fresh.run("getprop ro.product.model") == "Pixel 7\n"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(header(Command.CNXN, magic=0x12345678), id="bad-magic"),
        pytest.param(header(Command.CNXN, 0x01000001, 4096, length=MAX_PAYLOAD * 16), id="oversized-length"),
        pytest.param(header(0x41414141), id="unknown-command"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: phone\r\n\r\n" * 4, id="garbage"),
        pytest.param(cnxn()[:10], id="half-header"),
        pytest.param(cnxn(version=0x01000000, payload=b"host::\0")[:24] + b"host::\1", id="bad-checksum"),
    ],
)
def test_malformed_input_closes_only_that_connection(
    lab: LabThread, witness: adb.AdbConnection, identity: AdbIdentity, data: bytes
) -> None:
    exchange(lab, data)  # returns only once the phone has closed it
    assert_phone_healthy(lab, witness, identity)


def test_abrupt_close_mid_payload(lab: LabThread, witness: adb.AdbConnection, identity: AdbIdentity) -> None:
    endpoint = lab.endpoints[0]
    with socket.create_connection((endpoint.host, endpoint.port), timeout=CLOSE_TIMEOUT_S) as sock:
        sock.sendall(header(Command.CNXN, 0x01000001, 4096, length=200) + b"x" * 50)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    assert_phone_healthy(lab, witness, identity)


def test_unauthenticated_host_gets_no_service(
    lab: LabThread, witness: adb.AdbConnection, identity: AdbIdentity
) -> None:
    opened = header(Command.OPEN, 1, 0, 7) + b"shell:\0"
    answer = exchange(lab, cnxn() + opened)
    assert answer[:4] == b"AUTH"  # the token challenge, and nothing for the OPEN
    assert b"OKAY" not in answer and b"WRTE" not in answer
    assert_phone_healthy(lab, witness, identity)


def test_empty_public_key_does_not_crash_an_accepting_phone(start_lab, identity: AdbIdentity) -> None:
    lab = start_lab([PhoneProfile(serial="vt-accept-empty")], keys_file=None, accept_new_keys=True)
    for payload in (b"", b"\0", b"not base64!\0", b"QUFBQQ== comment\0"):
        auth = header(Command.AUTH, 3, 0, len(payload), sum(payload)) + payload
        answer = exchange(lab, cnxn() + auth)
        assert answer.count(b"CNXN") == 0  # stays unauthorized
    with connect(lab.endpoints[0], identity) as connection:  # a real key is still accepted afterwards
        assert connection.run("echo ok") == "ok\n"


def raw_packets() -> st.SearchStrategy[bytes]:
    """Random bytes, and headers that are valid enough to get past the first check."""
    commands = st.sampled_from([int(c) for c in Command] + [0, 0xFFFFFFFF])
    plausible = st.builds(
        lambda cmd, a0, a1, length, check, good_magic, tail: (
            header(cmd, a0, a1, length, check, None if good_magic else cmd) + tail
        ),
        commands,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
        st.integers(0, 2**32 - 1),
        st.booleans(),
        st.binary(max_size=64),
    )
    return st.one_of(
        st.binary(max_size=300), plausible, st.lists(plausible, min_size=2, max_size=4).map(b"".join)
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=raw_packets())
def test_random_input_never_hangs_or_crashes_the_phone(
    lab: LabThread, witness: adb.AdbConnection, data: bytes
) -> None:
    exchange(lab, cnxn() + data if data[:1] == b"\0" else data)
    assert witness.run("echo alive") == "alive\n"
