"""devices/adb.py against a hostile adbd (tests/devices/hostile_adbd.py, the real wire protocol):
whatever a phone claims or sends, the platform holds and writes at most a fixed amount, and turns the
excess into one of the seam's errors — never a hang, never memory or a file that grows without bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices import adb
from devices.adb_identity import AdbIdentity, load_or_create_identity
from tests.devices.hostile_adbd import HostileAdbd, Stream, stat_answer

CHUNK = 64 * 1024
TIMEOUT_S = 30.0  # generous; every refusal below must come long before it (each asserts how soon)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> AdbIdentity:
    return load_or_create_identity(tmp_path_factory.mktemp("key") / "adbkey")


def connect(adbd: HostileAdbd, identity: AdbIdentity) -> adb.AdbConnection:
    return adb.connect(adb.Target("tcp", adbd.address), identity=identity, timeout_s=TIMEOUT_S)


def send_data(stream: Stream, total: int) -> None:
    """`total` bytes of file data as 64 KiB DATA chunks, then DONE."""
    sent = 0
    while sent < total:
        size = min(CHUNK, total - sent)
        stream.sync(b"DATA", size, b"\xab" * size)
        sent += size
    stream.sync(b"DONE", 0)


def left_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- pulls ---------------------------------------------------------------------------------------------
def test_a_pull_stops_at_the_limit_whatever_stat_said(identity: AdbIdentity, tmp_path: Path) -> None:
    # STAT says 10 bytes; the phone then sends 10 MB.
    adbd = HostileAdbd(
        on_stat=stat_answer(10), on_recv=lambda path, stream: send_data(stream, 10 * 1024 * 1024)
    )
    out = tmp_path / "pulled"
    out.mkdir()
    with adbd, connect(adbd, identity) as phone:
        started = time.monotonic()
        with pytest.raises(adb.RemoteFileTooLarge) as too_large:
            phone.pull_files(
                [("/data/local/tmp/update.safetensors", out / "update.safetensors")], max_bytes=100_000
            )
        assert time.monotonic() - started < TIMEOUT_S / 2
        assert phone.closed  # the phone is still sending: the connection cannot be reused
    error = too_large.value
    assert error.remote == "/data/local/tmp/update.safetensors"
    assert 100_000 < error.size <= 100_000 + CHUNK  # cut at the first chunk past the limit
    assert "more than the 100000-byte limit (its STAT said 10 bytes)" in error.message
    assert left_in(out) == []  # no destination file, no partial one


def test_a_pull_without_its_own_limit_has_the_default_one(
    identity: AdbIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adb, "DEFAULT_MAX_PULL_BYTES", 300_000)
    adbd = HostileAdbd(
        on_stat=stat_answer(10), on_recv=lambda path, stream: send_data(stream, 5 * 1024 * 1024)
    )
    with adbd, connect(adbd, identity) as phone, pytest.raises(adb.RemoteFileTooLarge):
        phone.pull("/data/local/tmp/x", tmp_path / "x")
    assert left_in(tmp_path) == []


def test_an_honest_pull_within_the_limit_is_written(identity: AdbIdentity, tmp_path: Path) -> None:
    adbd = HostileAdbd(on_stat=stat_answer(200_000), on_recv=lambda path, stream: send_data(stream, 200_000))
    with adbd, connect(adbd, identity) as phone:
        assert phone.pull("/data/local/tmp/x", tmp_path / "x", max_bytes=200_000) == 200_000
        assert not phone.closed and phone.shell("true") == ""  # usable afterwards
    assert (tmp_path / "x").read_bytes() == b"\xab" * 200_000


def test_a_file_stat_says_is_too_large_is_refused_before_any_transfer(
    identity: AdbIdentity, tmp_path: Path
) -> None:
    received: list[bytes] = []
    adbd = HostileAdbd(on_stat=stat_answer(0xFFFFFFF0), on_recv=lambda path, stream: received.append(path))
    with adbd, connect(adbd, identity) as phone:
        with pytest.raises(adb.RemoteFileTooLarge) as too_large:
            phone.pull("/data/local/tmp/x", tmp_path / "x", max_bytes=1000)
        assert too_large.value.size == 0xFFFFFFF0 and not phone.closed
    assert received == [] and left_in(tmp_path) == []


def test_a_fail_reply_announcing_100_mb_is_not_waited_for(identity: AdbIdentity, tmp_path: Path) -> None:
    def fail_then_junk(path: bytes, stream: Stream) -> None:
        stream.sync(b"FAIL", 100_000_000)
        for _ in range(4):  # a few MB of "message" that must not be collected
            stream.write(b"y" * (1024 * 1024))

    adbd = HostileAdbd(on_stat=stat_answer(10), on_recv=fail_then_junk)
    with adbd, connect(adbd, identity) as phone:
        started = time.monotonic()
        with pytest.raises(adb.TransferFailed, match="a FAIL reply of 100000000 bytes"):
            phone.pull("/data/local/tmp/x", tmp_path / "x")
        assert time.monotonic() - started < TIMEOUT_S / 2 and phone.closed
    assert left_in(tmp_path) == []


def test_a_short_fail_reply_is_the_phones_reason(identity: AdbIdentity, tmp_path: Path) -> None:
    reason = b"open failed: Permission denied"
    adbd = HostileAdbd(
        on_stat=stat_answer(10), on_recv=lambda path, stream: stream.sync(b"FAIL", len(reason), reason)
    )
    with adbd, connect(adbd, identity) as phone:
        with pytest.raises(adb.TransferFailed, match="Permission denied"):
            phone.pull("/data/local/tmp/x", tmp_path / "x")


def test_a_data_chunk_over_64_kib_is_refused(identity: AdbIdentity, tmp_path: Path) -> None:
    def oversized(path: bytes, stream: Stream) -> None:
        stream.sync(b"DATA", 512 * 1024, b"z" * (512 * 1024))

    adbd = HostileAdbd(on_stat=stat_answer(10), on_recv=oversized)
    with adbd, connect(adbd, identity) as phone, pytest.raises(adb.TransferFailed, match="524288 bytes"):
        phone.pull("/data/local/tmp/x", tmp_path / "x")
    assert left_in(tmp_path) == []


def test_packets_for_streams_nobody_opened_are_not_hoarded(identity: AdbIdentity, tmp_path: Path) -> None:
    def flood(path: bytes, stream: Stream) -> None:
        for _ in range(5000):  # 5 GB of 1 MiB packets if they were all kept; the STAT is never answered
            stream.write_to(stream.host_id + 1000, b"s" * (1024 * 1024))

    adbd = HostileAdbd(on_stat=flood)
    with adbd, connect(adbd, identity) as phone:
        started = time.monotonic()
        with pytest.raises(adb.TransferFailed, match=f"more than {adb.MAX_STRAY_PACKETS} packets"):
            phone.pull("/data/local/tmp/x", tmp_path / "x")
        assert time.monotonic() - started < TIMEOUT_S / 2 and phone.closed


# --- shell output ---------------------------------------------------------------------------------------
def endless(data: bytes) -> HostileAdbd:
    """A phone whose every shell command prints `data` forever (until the host hangs up)."""

    def forever(command: bytes, stream: Stream) -> None:
        while True:
            stream.write(data)

    return HostileAdbd(on_shell=forever)


def test_a_line_without_newline_is_cut_not_grown(identity: AdbIdentity) -> None:
    adbd = endless(b"x" * (1024 * 1024))
    with adbd, connect(adbd, identity) as phone:
        lines: Iterator[str] = phone.stream_lines("agent train", timeout_s=TIMEOUT_S)
        started = time.monotonic()
        first = next(lines)  # the old code waited for a newline that never comes, holding everything
        assert time.monotonic() - started < TIMEOUT_S / 2
        assert first == "x" * adb.MAX_LINE_BYTES  # cut at the limit; the rest of the line is dropped
        lines.close()
        assert phone.closed


def test_a_long_line_is_cut_and_the_next_lines_still_come(identity: AdbIdentity) -> None:
    def long_then_short(command: bytes, stream: Stream) -> None:
        stream.write(b'{"event": "progress"}\n')
        for _ in range(10):
            stream.write(b"x" * (1024 * 1024))
        stream.write(b"tail of the long line\nnext line\r\nlast, without newline")

    adbd = HostileAdbd(on_shell=long_then_short)
    with adbd, connect(adbd, identity) as phone:
        lines = list(phone.stream_lines("agent train", timeout_s=TIMEOUT_S))
        assert not phone.closed
    assert lines == ['{"event": "progress"}', "x" * adb.MAX_LINE_BYTES, "next line", "last, without newline"]


def test_shell_output_is_bounded(identity: AdbIdentity) -> None:
    adbd = endless(b"0123456789abcdef" * 4096)
    with adbd, connect(adbd, identity) as phone:
        started = time.monotonic()
        with pytest.raises(adb.OutputTooLarge, match="printed more than 1000000 bytes"):
            phone.shell("getprop", max_bytes=1_000_000)
        assert time.monotonic() - started < TIMEOUT_S / 2 and phone.closed
    adbd = endless(b"z" * (1024 * 1024))
    with adbd, connect(adbd, identity) as phone, pytest.raises(adb.OutputTooLarge):
        phone.run("dumpsys battery")  # the default bound (MAX_SHELL_OUTPUT_BYTES) holds for run() too


# --- the line splitter ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a", b"b\nc"], [b"ab", b"c"]),
        ([b"12345678\n"], [b"12345678"]),  # exactly the limit: whole
        ([b"1234", b"5678", b"\nz\n"], [b"12345678", b"z"]),  # the limit reached across chunks
        ([b"123456789abc\nz"], [b"12345678", b"z"]),  # over: cut, rest of that line dropped
        ([b"12345678", b"9abc", b"def\nz\n"], [b"12345678", b"z"]),
        ([b"\n\n"], [b"", b""]),
        ([b""], []),
    ],
)
def test_line_splitter(chunks: list[bytes], lines: list[bytes]) -> None:
    splitter = adb._LineSplitter(8)
    out = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.finish()
    assert out == lines
