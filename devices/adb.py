"""The platform's one seam to ADB. Nothing else in the project imports adb_shell.

    connect(Target("tcp", "10.0.0.7:5555")) -> AdbConnection     # platform key unless identity= is given
    with connect(target) as phone:
        phone.run("mkdir -p " + quote(work_dir))                 # raises CommandFailed on non-zero status
        for line in phone.stream_lines(f"{quote(py)} agent.pyz train r1", timeout_s=600): ...
        phone.push(Path("model.safetensors"), work_dir + "model.safetensors", progress=on_progress)
        with phone.open_stream("tcp:7000") as agent:              # the phone's loopback port 7000
            agent.sendall(b"..."); agent.recv(65536)             # socket-like (see DeviceStream)

Errors: AdbError and its subclasses below; every adb-shell, socket and protocol exception is mapped
to one of them. After DeviceOffline, DeviceTimeout or a broken transfer the connection is closed (its
state is unknown); later calls raise DeviceOffline, so callers reconnect. CommandFailed and a missing
remote file leave the connection usable. An AdbConnection is for one thread at a time.

Bounds: nothing a phone sends can make us hold or write more than a fixed amount. A pull stops at its
byte limit (max_bytes, else DEFAULT_MAX_PULL_BYTES) however many bytes STAT announced and the phone then
sends; a FAIL message is at most SYNC_FAIL_MAX bytes; shell() output is at most MAX_SHELL_OUTPUT_BYTES
(OutputTooLarge); a stream_lines() line is at most MAX_LINE_BYTES (a longer one is cut, see there); and
packets for streams we are not reading are kept up to MAX_STRAY_PACKETS; a DeviceStream holds at most
MAX_STREAM_BUFFER_BYTES received and not yet read. Past a bound the connection is closed: the phone is
still sending, so the stream is out of step.

Speed: adb-shell's own loops are used, with three hot spots replaced — TCP_NODELAY (2-4x on loopback),
payload checksums summed by numpy instead of Python's sum() (which alone caps a transfer near 100 MB/s),
and payloads read with recv_into into one buffer instead of many small reads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import secrets
import select
import shlex
import socket
import stat as stat_module
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from adb_shell import adb_device, constants
from adb_shell import exceptions as adb_errors
from adb_shell.adb_message import AdbMessage, unpack
from adb_shell.auth.sign_cryptography import CryptographySigner
from adb_shell.hidden_helpers import _AdbPacketStore, _AdbTransactionInfo
from adb_shell.transport.tcp_transport import TcpTransport

from devices.adb_identity import AdbIdentity, platform_identity

__all__ = [
    "AdbConnection",
    "AdbError",
    "CommandFailed",
    "DeviceOffline",
    "DeviceTimeout",
    "DeviceStream",
    "DeviceUnauthorized",
    "OutputTooLarge",
    "RemoteFileMissing",
    "RemoteFileTooLarge",
    "RemoteStat",
    "StreamLost",
    "StreamRefused",
    "StreamTimeout",
    "Target",
    "TransferFailed",
    "connect",
    "quote",
]

# How long a phone may stay silent after we offered our public key: a real phone shows "Allow USB
# debugging?" and waits for a person, so this ends as DeviceUnauthorized and the UI shows the fingerprint.
AUTH_PROMPT_WAIT_S = 1.0


# --- errors ---------------------------------------------------------------------------------------
class AdbError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DeviceOffline(AdbError):
    """Refused, reset, unreachable, or the connection was lost."""


class DeviceUnauthorized(AdbError):
    """The phone rejected our key, or waits for a person to accept it."""


class DeviceTimeout(AdbError):
    """Connected, but the phone did not answer in time."""


class TransferFailed(AdbError):
    """A push or pull broke off, or the remote file is missing."""


class RemoteFileMissing(TransferFailed):
    """A file to pull does not exist (nothing was transferred; the connection is still usable)."""

    def __init__(self, message: str, *, remote: str) -> None:
        super().__init__(message)
        self.remote = remote


class RemoteFileTooLarge(TransferFailed):
    """A file to pull is over the caller's limit. Found by STAT: nothing was transferred and the connection
    is still usable. Found mid-transfer (the phone sent more than the limit, whatever STAT said): the
    transfer was cut off at the limit, nothing was written, and the connection is closed. `size` is what
    STAT said in the first case, and at least the bytes that came in the second."""

    def __init__(self, message: str, *, remote: str, size: int, cut_off: bool = False) -> None:
        super().__init__(message)
        self.remote = remote
        self.size = size
        self.cut_off = cut_off  # True: found mid-transfer, `size` is a lower bound


class OutputTooLarge(AdbError):
    """A command printed more than shell() keeps; the connection is closed (the phone is still sending)."""


class StreamRefused(AdbError):
    """The phone refused to open the service — for `tcp:<port>`, nothing listens on that port of the
    phone's loopback (adbd answers CLSE at once). The connection is still usable."""

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


class StreamTimeout(DeviceTimeout, TimeoutError):
    """A DeviceStream's recv() or sendall() did not complete within its timeout. Also a TimeoutError, as
    a socket's is: code written for sockets (training.agent.protocol) handles both alike. When nothing at
    all arrived in recv()'s wait, nothing was lost and the stream is still usable; otherwise it is closed."""


class StreamLost(DeviceOffline, ConnectionError):
    """A DeviceStream broke: the phone closed it while we were sending, or the connection is gone (it is
    then closed). Also a ConnectionError, as a socket's would be."""


class CommandFailed(AdbError):
    """A shell command exited non-zero (run() only)."""

    def __init__(self, message: str, *, exit_code: int, output: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


# --- values ---------------------------------------------------------------------------------------
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
_USB_SERIAL = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


@dataclass(frozen=True)
class Target:
    """Where a phone is: "host:port" over TCP, or a USB serial."""

    transport: Literal["tcp", "usb"]
    address: str

    def __post_init__(self) -> None:
        if self.transport == "tcp":
            match = _HOST_PORT.match(self.address)
            if match is None or not 0 < int(match["port"]) < 65536:
                raise ValueError(f"not a host:port address: {self.address!r}")
        elif self.transport == "usb":
            if not _USB_SERIAL.match(self.address):
                raise ValueError(f"not a USB serial: {self.address!r}")
        else:
            raise ValueError(f"unknown transport {self.transport!r} (tcp or usb)")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RemoteStat:
    mode: int
    size: int
    mtime: int

    @property
    def is_dir(self) -> bool:
        return stat_module.S_ISDIR(self.mode)


def quote(arg: str) -> str:
    """Every argument put into a phone command goes through this (POSIX shell quoting)."""
    return shlex.quote(arg)


_VERSION_CHECKSUMMED = 0x01000000
_VERSION_SKIP_CHECKSUM = 0x01000001

# --- bounds on what a phone can make us hold (see the module docstring) ---------------------------
DEFAULT_MAX_PULL_BYTES = 1 << 31  # a pull with no limit of its own (sync v1 sizes are u32 anyway)
SYNC_FAIL_MAX = 64 * 1024  # adbd's FAIL reasons are one line of text
MAX_SHELL_OUTPUT_BYTES = 16 * 1024 * 1024  # telemetry and file listings are kilobytes
MAX_LINE_BYTES = 64 * 1024  # an agent's progress line is ~200 bytes
# We read one stream at a time; only a few packets for other streams can legitimately be waiting
# (late OKAYs, a CLSE crossing ours).
MAX_STRAY_PACKETS = 64
# A DeviceStream acknowledges what the phone writes as it arrives; this much may wait unread (it only
# grows while sendall() waits for the phone to take our data and the phone keeps writing).
MAX_STREAM_BUFFER_BYTES = 16 * 1024 * 1024
MAX_SERVICE_NAME = 1024
STREAM_PACKET_TIMEOUT_S = 10.0  # once a packet has begun to arrive, the rest of it comes within this


# --- fast transport -------------------------------------------------------------------------------
def _checksum(data: bytes | bytearray | memoryview) -> int:
    if len(data) > 256:
        return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF
    return sum(bytes(data)) & 0xFFFFFFFF


class _Transport(TcpTransport):
    """adb-shell's TCP transport with TCP_NODELAY, an operation deadline, EOF detection (a closed
    socket reads b"" forever, which adb-shell would spin on until its read timeout), whole writes
    (adb-shell ignores short sends) and reads into one preallocated buffer."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.deadline: float | None = None

    def connect(self, transport_timeout_s: float | None) -> None:
        super().connect(transport_timeout_s)
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection.setblocking(False)

    def _wait(self, event: int, timeout_s: float | None) -> None:
        limit = timeout_s
        if self.deadline is not None:
            remaining = max(self.deadline - time.monotonic(), 0.0)
            limit = remaining if limit is None else min(limit, remaining)
        poller = select.poll()
        poller.register(self._connection, event)
        if not poller.poll(None if limit is None else limit * 1000):
            raise adb_errors.TcpTimeoutException(f"no answer from {self._host}:{self._port} within {limit} s")

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        return self.read_exactly(min(numbytes, 1 << 16), transport_timeout_s, partial=True)

    def read_exactly(self, length: int, transport_timeout_s: float | None, partial: bool = False) -> bytes:
        buffer = bytearray(length)
        view = memoryview(buffer)
        received = 0
        while received < length:
            try:
                count = self._connection.recv_into(view[received:])
            except BlockingIOError:
                self._wait(select.POLLIN, transport_timeout_s)
                continue
            if count == 0:
                raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
            received += count
            if partial:
                break
        return bytes(view[:received])

    def bulk_write(self, data: bytes, transport_timeout_s: float | None) -> int:
        self.write_all([data], transport_timeout_s)
        return len(data)

    def write_all(
        self, parts: Sequence[bytes | bytearray | memoryview], transport_timeout_s: float | None
    ) -> None:
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            try:
                sent = self._connection.sendmsg(views)
            except BlockingIOError:
                self._wait(select.POLLOUT, transport_timeout_s)
                continue
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]


class _BoundedPacketStore(_AdbPacketStore):
    """adb-shell keeps each packet for a stream other than the one being read until someone reads it; a
    phone sending packets for streams nobody reads would fill our memory. Past MAX_STRAY_PACKETS waiting,
    the connection is dropped (InvalidResponseError is fatal, see _FATAL_ERRORS)."""

    def put(self, arg0: int, arg1: int, cmd: bytes, data: bytes) -> None:
        waiting = sum(queue_.qsize() for streams in self._dict.values() for queue_ in streams.values())
        if waiting >= MAX_STRAY_PACKETS:
            raise adb_errors.InvalidResponseError(
                f"more than {MAX_STRAY_PACKETS} packets for streams that are not being read"
            )
        super().put(arg0, arg1, cmd, data)


class _IOManager(adb_device._AdbIOManager):
    """adb-shell's packet I/O with a fast checksum and single-buffer payload reads (same wire format).

    We announce protocol version 0x01000001 in CNXN, as Google's adb does, instead of adb-shell's
    0x01000000: a phone that supports it (Android 9+, the virtual phones) then skips payload checksums
    in both directions. With an older phone the connection stays on 0x01000000 and checksums are
    computed and verified as before.

    Streams listed in `early_ack` (our sync streams) get their OKAY as soon as a WRTE's header has
    arrived, so the phone can send the next packet while this one is still being read: the phone's
    one-packet-in-flight window then never stalls on our side.
    """

    def __init__(self, transport: Any) -> None:
        super().__init__(transport)
        self._packet_store = _BoundedPacketStore()
        self.early_ack: set[int] = set()
        self.version: int | None = None  # the phone's, known from its CNXN

    @property
    def checksummed(self) -> bool:
        """Whether payloads carry checksums; during the handshake we send them anyway (harmless)."""
        return self.version is None or self.version < _VERSION_SKIP_CHECKSUM

    def _read_bytes_from_device(self, length: int, adb_info: Any) -> bytes:
        read_exactly = getattr(self._transport, "read_exactly", None)
        if read_exactly is None:
            return bytes(super()._read_bytes_from_device(length, adb_info))
        return bytes(read_exactly(length, adb_info.transport_timeout_s))

    def _read_packet_from_device(self, adb_info: Any) -> tuple[bytes, int, int, bytes]:
        header = self._read_bytes_from_device(constants.MESSAGE_SIZE, adb_info)
        cmd, arg0, arg1, length, check = unpack(header)
        command = constants.WIRE_TO_ID.get(cmd)
        if not command:
            raise adb_errors.InvalidCommandError(f"unknown command {cmd:#x}")
        if length == 0:
            return command, arg0, arg1, b""
        if length > constants.MAX_ADB_DATA:
            raise adb_errors.InvalidResponseError(f"payload of {length} bytes exceeds the maximum")
        if command == constants.WRTE and arg1 in self.early_ack:
            self._send(AdbMessage(constants.OKAY, arg1, arg0), adb_info)  # we hold the transport lock
        data = self._read_bytes_from_device(length, adb_info)
        if command == constants.CNXN:
            self.version = min(arg0, _VERSION_SKIP_CHECKSUM)
            if arg0 >= _VERSION_SKIP_CHECKSUM:
                return command, arg0, arg1, data
        # Before the phone's CNXN its version is unknown: its AUTH token may come without a checksum.
        must_verify = self.checksummed if self.version is not None else check != 0
        if must_verify and _checksum(data) != check:
            raise adb_errors.InvalidChecksumError(f"checksum mismatch on {command!r}")
        return command, arg0, arg1, data

    def _send(self, msg: Any, adb_info: Any) -> None:
        data = msg.data or b""
        arg0 = msg.arg0
        if msg.command == constants.ID_TO_WIRE[constants.CNXN]:
            arg0 = _VERSION_SKIP_CHECKSUM
            self.version = None  # a new handshake
        check = _checksum(data) if self.checksummed else 0
        header = struct.pack(
            constants.MESSAGE_FORMAT, msg.command, arg0, msg.arg1, len(data), check, msg.magic
        )
        write_all = getattr(self._transport, "write_all", None)
        if write_all is not None:
            write_all([header, data], adb_info.transport_timeout_s)
            return
        self._transport.bulk_write(header, adb_info.transport_timeout_s)
        if data:
            self._transport.bulk_write(data, adb_info.transport_timeout_s)


def _make_device(target: Target, timeout_s: float) -> tuple[Any, _Transport | None]:
    if target.transport == "tcp":
        host, port = target.host_port
        transport = _Transport(host, port)
        device = adb_device.AdbDevice(transport, default_transport_timeout_s=timeout_s)
        device._io_manager = _IOManager(transport)
        return device, transport
    if getattr(adb_device, "UsbTransport", None) is None:
        raise AdbError(
            "USB needs adb-shell's USB extra (pip install 'adb-shell[usb]') and libusb on this host; "
            "or reach the phone over TCP (adb tcpip 5555)"
        )
    try:
        device = adb_device.AdbDeviceUsb(serial=target.address, default_transport_timeout_s=timeout_s)
    except adb_errors.UsbDeviceNotFoundError as exc:
        raise DeviceOffline(f"USB device {target.address} not found: {exc}") from None
    device._io_manager = _IOManager(device._io_manager._transport)
    return device, None


# --- sync protocol (push/pull) --------------------------------------------------------------------
_SYNC_HEADER = struct.Struct("<4sI")
_SYNC_DATA_MAX = 64 * 1024


class _RemoteFailure(Exception):
    """The phone answered a sync request with FAIL (e.g. a missing file); the stream is still in step."""


class _PullOverLimit(Exception):
    """The phone sent more file data than the pull's limit; the rest is still on its way (out of step)."""

    def __init__(self, at_least: int) -> None:
        super().__init__(at_least)
        self.at_least = at_least


class _SyncStream:
    """One `sync:` stream driven over adb-shell's packet layer (its open/read/OKAY/close primitives).

    adb-shell's own push copies each megabyte three times and reads the next file chunk only after the
    previous packet was acknowledged; here the next packet is read from disk straight into its buffer
    while the phone still works on the previous one, and pulled data goes from the received packet to
    the file without an intermediate buffer.
    """

    def __init__(self, device: Any, timeout_s: float) -> None:
        self._device = device
        self._io = device._io_manager
        self._info = device._open(b"sync:", timeout_s, timeout_s, None)
        if isinstance(self._io, _IOManager):
            self._io.early_ack.add(self._info.local_id)
        self._pending = bytearray()  # received bytes not yet consumed
        self._unacknowledged = False  # a WRTE of ours still waits for its OKAY
        self.max_payload = max(min(int(device._maxdata), constants.MAX_ADB_DATA), 4096)

    def close(self) -> None:
        if isinstance(self._io, _IOManager):
            self._io.early_ack.discard(self._info.local_id)
        self._device._clse(self._info)

    # --- packets ----------------------------------------------------------------------------------
    def send(self, payload: bytes | bytearray | memoryview) -> None:
        """Send one WRTE; waits first for the OKAY of the previous one (one in flight per stream)."""
        self.wait_acknowledged()
        info = self._info
        self._device._io_manager.send(
            AdbMessage(constants.WRTE, info.local_id, info.remote_id, payload), info
        )
        self._unacknowledged = True

    def wait_acknowledged(self) -> None:
        while self._unacknowledged:
            self._next_packet()

    def _next_packet(self) -> None:
        expected = [constants.OKAY, constants.WRTE, constants.CLSE]
        command, _, _, data = self._io.read(expected, self._info, allow_zeros=True)
        if command == constants.OKAY:
            self._unacknowledged = False
        elif command == constants.WRTE:
            if self._info.local_id not in getattr(self._io, "early_ack", ()):
                self._device._okay(self._info)
            self._pending += data
        else:
            raise ConnectionAbortedError("the phone closed the sync stream")

    def receive(self, size: int) -> memoryview:
        """The next `size` received bytes (waiting for packets as needed)."""
        while len(self._pending) < size:
            self._next_packet()
        chunk = memoryview(bytes(self._pending[:size]))
        del self._pending[:size]
        return chunk

    def receive_into(self, sink: _BackgroundWriter, size: int) -> None:
        """Hand the next `size` received bytes to the file writer as the packets come."""
        while size:
            if not self._pending:
                self._next_packet()
                continue
            take = min(size, len(self._pending))
            sink.write(bytes(self._pending[:take]))
            del self._pending[:take]
            size -= take

    def reply(self) -> tuple[bytes, int]:
        request_id, value = _SYNC_HEADER.unpack(self.receive(_SYNC_HEADER.size))
        if request_id == b"FAIL":
            if value > SYNC_FAIL_MAX:  # receive() would otherwise wait for (and hold) up to 4 GiB
                raise adb_errors.InvalidResponseError(
                    f"a FAIL reply of {value} bytes (at most {SYNC_FAIL_MAX})"
                )
            raise _RemoteFailure(bytes(self.receive(value)).decode("utf-8", errors="replace"))
        return request_id, value

    # --- requests ---------------------------------------------------------------------------------
    def push(self, source: Any, spec: bytes, progress: Callable[[int], None]) -> None:
        """SEND spec, DATA chunks filling each packet, DONE mtime; then expect OKAY."""
        buffer = bytearray(self.max_payload)
        view = memoryview(buffer)
        position = _pack_request(view, 0, b"SEND", spec)
        finished = False
        while not finished:
            position, moved, finished = _fill_data(view, position, source)
            if finished and position + _SYNC_HEADER.size <= len(view):
                _SYNC_HEADER.pack_into(view, position, b"DONE", int(time.time()))
                position += _SYNC_HEADER.size
                done_sent = True
            else:
                done_sent = False
            self.send(view[:position])
            progress(moved)
            position = 0
        if not done_sent:
            self.send(_SYNC_HEADER.pack(b"DONE", int(time.time())))
        self.wait_acknowledged()
        request_id, _ = self.reply()
        if request_id != b"OKAY":
            raise adb_errors.InvalidResponseError(f"unexpected {request_id!r} after a push")

    def pull(self, remote: bytes, sink: Any, progress: Callable[[int], None], *, limit: int) -> None:
        """RECV remote into sink; _PullOverLimit as soon as the DATA announced would pass `limit` bytes
        (before that chunk is read), whatever the phone's STAT said."""
        self.send(_SYNC_HEADER.pack(b"RECV", len(remote)) + remote)
        writer = _BackgroundWriter(sink)
        received = 0
        try:
            while True:
                request_id, length = self.reply()
                if request_id == b"DONE":
                    return
                if request_id != b"DATA" or length > _SYNC_DATA_MAX:
                    raise adb_errors.InvalidResponseError(
                        f"unexpected {request_id!r} ({length} bytes) in a pull"
                    )
                if received + length > limit:
                    raise _PullOverLimit(received + length)
                self.receive_into(writer, length)
                received += length
                progress(length)
        finally:
            writer.close()

    def stat(self, remote: bytes) -> tuple[int, int, int]:
        self.send(_SYNC_HEADER.pack(b"STAT", len(remote)) + remote)
        request_id, mode, size, mtime = struct.unpack("<4sIII", self.receive(16))
        if request_id != b"STAT":
            raise adb_errors.InvalidResponseError(f"unexpected {request_id!r} to STAT")
        return mode, size, mtime


class _BackgroundWriter:
    """Writes pulled data to the file from a second thread, so that receiving the next packet (and
    acknowledging it) overlaps with the disk write; both release the GIL."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="adb-pull-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._sink.write(block)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def write(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _pack_request(view: memoryview, position: int, request_id: bytes, payload: bytes) -> int:
    _SYNC_HEADER.pack_into(view, position, request_id, len(payload))
    position += _SYNC_HEADER.size
    view[position : position + len(payload)] = payload
    return position + len(payload)


def _fill_data(view: memoryview, position: int, source: Any) -> tuple[int, int, bool]:
    """Append DATA chunks read from `source` until the packet is full or the file ends.
    Returns (new position, file bytes added, end of file reached)."""
    moved = 0
    while len(view) - position > _SYNC_HEADER.size:
        room = min(_SYNC_DATA_MAX, len(view) - position - _SYNC_HEADER.size)
        count = source.readinto(view[position + _SYNC_HEADER.size : position + _SYNC_HEADER.size + room])
        if not count:
            return position, moved, True
        _SYNC_HEADER.pack_into(view, position, b"DATA", count)
        position += _SYNC_HEADER.size + count
        moved += count
    return position, moved, False


# --- service streams (tcp:) -------------------------------------------------------------------------
def _open_service(device: Any, service: bytes, timeout_s: float) -> Any:
    """OPEN a service and wait for OKAY (returns the stream's ids) or CLSE (refused: None). adb-shell's
    own _open waits for OKAY only, so a refusal would look like a timeout."""
    with device._local_id_lock:
        device._local_id = device._local_id % (2**32 - 1) + 1
        info = _AdbTransactionInfo(device._local_id, None, timeout_s, timeout_s, None)
    io = device._io_manager
    io.send(AdbMessage(constants.OPEN, info.local_id, 0, service + b"\0"), info)
    command, arg0, _, _ = io.read([constants.OKAY, constants.CLSE], info)
    if command == constants.CLSE:
        return None
    info.remote_id = arg0
    return info


class DeviceStream:
    """One open service stream of a connection (e.g. `tcp:7000`), as a byte stream with the methods of a
    socket that training.agent.protocol.AgentClient uses: sendall, recv, settimeout, close.

    recv(n) returns what the phone wrote (up to n bytes), b"" once the phone closed the stream. Both
    calls honour settimeout(): a recv that saw nothing arrive raises StreamTimeout and can be retried;
    every other failure closes the connection and raises StreamLost / StreamTimeout (after which calls
    raise StreamLost). Writes are WRTE packets of at most the connection's payload size, one in flight,
    as adbd expects; the phone's writes are acknowledged as they arrive. While the stream is open, use
    no other command on its connection (one thread, one conversation)."""

    def __init__(self, connection: AdbConnection, info: Any, service: str, *, timeout_s: float) -> None:
        self._connection = connection
        self._info = info
        self.service = service
        self._timeout_s: float | None = timeout_s
        self._pending = bytearray()
        self._unacknowledged = False  # our last WRTE still waits for the phone's OKAY
        self._peer_closed = False
        self._closed = False
        self._max_payload = max(min(int(connection._device._maxdata), constants.MAX_ADB_DATA), 4096)

    # --- the socket-like interface -----------------------------------------------------------------
    def settimeout(self, seconds: float | None) -> None:
        self._timeout_s = seconds

    def recv(self, size: int) -> bytes:
        deadline = self._deadline()
        while not self._pending and not self._peer_closed:
            self._next_packet(deadline, idle_ok=True)
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        return chunk

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        deadline = self._deadline()
        view = memoryview(data).cast("B")
        for offset in range(0, len(view), self._max_payload):
            while self._unacknowledged:
                self._next_packet(deadline, idle_ok=False)
            if self._peer_closed:
                raise StreamLost(f"{self._where}: the phone closed the stream")
            with self._io("send", deadline):
                info = self._info
                chunk = bytes(view[offset : offset + self._max_payload])
                self._io_manager.send(AdbMessage(constants.WRTE, info.local_id, info.remote_id, chunk), info)
            self._unacknowledged = True

    def close(self) -> None:
        """CLSE, and wait (briefly) for the phone's CLSE back; the connection stays usable."""
        if self._closed:
            return
        self._closed = True
        if self._peer_closed or self._connection.closed:
            return
        info = self._info
        with contextlib.suppress(AdbError):
            with self._connection._errors(f"close {self.service}", 5.0):
                self._io_manager.send(AdbMessage(constants.CLSE, info.local_id, info.remote_id), info)
                info.read_timeout_s = info.transport_timeout_s = 5.0
                while (
                    self._io_manager.read([constants.CLSE, constants.WRTE, constants.OKAY], info)[0]
                    != constants.CLSE
                ):
                    pass  # data in flight when we closed: dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> DeviceStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- packets -------------------------------------------------------------------------------------
    @property
    def _io_manager(self) -> Any:
        return self._connection._device._io_manager

    @property
    def _where(self) -> str:
        return f"{self.service} on {self._connection.target.address}"

    def _deadline(self) -> float | None:
        if self._closed or self._connection.closed:
            raise StreamLost(f"{self._where}: the stream is closed")
        return None if self._timeout_s is None else time.monotonic() + self._timeout_s

    def _next_packet(self, deadline: float | None, *, idle_ok: bool) -> None:
        """Handle the stream's next packet. Waiting for it past the deadline raises StreamTimeout: without
        harm when `idle_ok` (nothing was read), else closing the connection (we owe or await an answer)."""
        if not self._packet_waiting(deadline):
            if idle_ok:
                raise StreamTimeout(f"{self._where}: nothing arrived within {self._timeout_s} s")
            self._connection.close()
            raise StreamTimeout(f"{self._where}: the phone did not take our data within {self._timeout_s} s")
        with self._io("receive", deadline):
            info = self._info
            budget = STREAM_PACKET_TIMEOUT_S if deadline is None else max(deadline - time.monotonic(), 0.0)
            info.read_timeout_s = info.transport_timeout_s = max(budget, STREAM_PACKET_TIMEOUT_S)
            command, _, _, data = self._io_manager.read(
                [constants.OKAY, constants.WRTE, constants.CLSE], info, allow_zeros=True
            )
            if command == constants.OKAY:
                self._unacknowledged = False
            elif command == constants.WRTE:
                self._io_manager.send(AdbMessage(constants.OKAY, info.local_id, info.remote_id), info)
                self._pending += data
                if len(self._pending) > MAX_STREAM_BUFFER_BYTES:
                    raise adb_errors.InvalidResponseError(
                        f"more than {MAX_STREAM_BUFFER_BYTES} bytes written to the stream and not read"
                    )
            else:  # the phone closed the stream: answer its CLSE (adbd waits for it)
                self._peer_closed = True
                self._unacknowledged = False
                self._io_manager.send(AdbMessage(constants.CLSE, info.local_id, info.remote_id), info)

    def _packet_waiting(self, deadline: float | None) -> bool:
        """Whether a packet for this stream is (or becomes, before the deadline) ready to read."""
        io, info = self._io_manager, self._info
        with io._store_lock:
            if io._packet_store.find_allow_zeros(info.remote_id, info.local_id):
                return True
        transport = self._connection._transport
        if transport is None:  # USB: no socket to wait on; the read itself bounds the wait
            return True
        poller = select.poll()
        poller.register(transport._connection, select.POLLIN)
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return bool(poller.poll(None if remaining is None else remaining * 1000))
            except InterruptedError:
                continue

    @contextlib.contextmanager
    def _io(self, action: str, deadline: float | None) -> Iterator[None]:
        """The connection's error mapping (which closes it on failure), as StreamLost / StreamTimeout."""
        budget = STREAM_PACKET_TIMEOUT_S if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            with self._connection._errors(
                f"{action} on {self.service}", max(budget, STREAM_PACKET_TIMEOUT_S)
            ):
                yield
        except DeviceTimeout as exc:
            raise StreamTimeout(exc.message) from exc
        except AdbError as exc:
            self._connection.close()
            raise StreamLost(exc.message) from exc


# --- the connection -------------------------------------------------------------------------------
_FATAL_ERRORS = (
    OSError,  # ConnectionRefused/Reset, BrokenPipe, socket.timeout, gaierror, ...
    adb_errors.AdbConnectionError,
    adb_errors.InvalidResponseError,
    adb_errors.InvalidChecksumError,
    adb_errors.InvalidCommandError,
    adb_errors.InvalidTransportError,
    adb_errors.UsbReadFailedError,
    adb_errors.UsbWriteFailedError,
    adb_errors.UsbDeviceNotFoundError,
    struct.error,
    KeyError,  # adb-shell looks unknown sync ids up in a dict
)


class AdbConnection:
    def __init__(self, target: Target, device: Any, transport: _Transport | None) -> None:
        self.target = target
        self._device = device
        self._transport = transport
        self._closed = False
        self._offered_public_key = False

    # --- lifecycle ------------------------------------------------------------------------------
    def _connect(self, identity: AdbIdentity, timeout_s: float, auth_timeout_s: float) -> None:
        def on_public_key_offered(_: object) -> None:
            self._offered_public_key = True

        try:
            signer = _signer(identity.private_key_path)
        except (OSError, ValueError) as exc:
            raise AdbError(f"cannot load the ADB key {identity.private_key_path}: {exc}") from None
        with self._errors("connect", timeout_s + auth_timeout_s):
            self._device.connect(
                rsa_keys=[signer],
                transport_timeout_s=timeout_s,
                auth_timeout_s=auth_timeout_s,
                read_timeout_s=timeout_s,
                auth_callback=on_public_key_offered,
            )
        self._fingerprint = identity.fingerprint_md5

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._device.close()

    def __enter__(self) -> AdbConnection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- commands ------------------------------------------------------------------------------
    def shell(self, command: str, *, timeout_s: float = 30.0, max_bytes: int = MAX_SHELL_OUTPUT_BYTES) -> str:
        """Output (stdout and stderr merged) of a command; its exit status is not checked. More than
        `max_bytes` of output raises OutputTooLarge and closes the connection (which stops the command)."""
        self._require_open()
        output = bytearray()
        finished = False
        try:
            with self._errors("shell", timeout_s):
                deadline = time.monotonic() + timeout_s
                chunks = self._device.streaming_shell(
                    command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s, decode=False
                )
                for chunk in chunks:
                    output += chunk
                    if len(output) > max_bytes:
                        raise OutputTooLarge(f"{command!r} printed more than {max_bytes} bytes")
                    if time.monotonic() > deadline:  # USB has no transport deadline; TCP stops sooner
                        raise DeviceTimeout(f"{command!r} did not finish within {timeout_s} s")
            finished = True
        finally:
            if not finished:
                self.close()
        return output.decode("utf-8", errors="replace")

    def run(self, command: str, *, timeout_s: float = 30.0) -> str:
        """Like shell(), but raises CommandFailed when the command's exit status is not 0."""
        marker = f"__fedfleet_status_{secrets.token_hex(6)}="
        output = self.shell(f"{command}; echo {marker}$?", timeout_s=timeout_s)
        position = output.rfind(marker)
        if position < 0:
            raise CommandFailed(f"no exit status from {command!r}", exit_code=-1, output=output)
        body, status_text = output[:position], output[position + len(marker) :].strip()
        try:
            status = int(status_text)
        except ValueError:
            raise CommandFailed(f"bad exit status {status_text!r}", exit_code=-1, output=body) from None
        if status != 0:
            raise CommandFailed(f"{command!r} exited with {status}", exit_code=status, output=body)
        return body

    def stream_lines(self, command: str, *, timeout_s: float) -> Iterator[str]:
        """Complete output lines (no trailing newline) as the phone produces them; the whole command must
        finish within timeout_s. Leaving the loop early closes the connection, which stops the command.

        A line is at most MAX_LINE_BYTES: one that reaches it without a newline is yielded at once, cut
        there, and the rest of it, up to the next newline, is dropped — so output without newlines cannot
        grow our memory, and a consumer parsing lines (JSON) sees a cut line as malformed."""
        self._require_open()
        finished = False
        splitter = _LineSplitter(MAX_LINE_BYTES)
        try:
            with self._errors("stream", timeout_s):
                deadline = time.monotonic() + timeout_s
                chunks = self._device.streaming_shell(
                    command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s, decode=False
                )
                for chunk in chunks:
                    for line in splitter.feed(bytes(chunk)):
                        yield _decode_line(line)
                    if time.monotonic() > deadline:
                        raise DeviceTimeout(f"{command!r} did not finish within {timeout_s} s")
            for line in splitter.finish():
                yield _decode_line(line)
            finished = True
        finally:
            if not finished:
                self.close()

    # --- service streams ------------------------------------------------------------------------
    def open_stream(self, service: str, *, timeout_s: float = 10.0) -> DeviceStream:
        """Open a service stream, e.g. "tcp:7000": the phone connects it to its own loopback port 7000 (what
        `adb forward` uses). StreamRefused when the phone refuses (nothing listens there); the returned
        stream's timeout starts as `timeout_s`."""
        if not (0 < len(service) <= MAX_SERVICE_NAME and service.isascii() and service.isprintable()):
            raise ValueError(f"not a service name: {service[:80]!r}")
        with self._errors(f"open {service}", timeout_s):
            info = _open_service(self._device, service.encode("ascii"), timeout_s)
        if info is None:
            raise StreamRefused(
                f"{self.target.address} refused {service} (nothing listens there)", service=service
            )
        return DeviceStream(self, info, service, timeout_s=timeout_s)

    # --- files ----------------------------------------------------------------------------------
    def push(
        self,
        local: Path,
        remote: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float = 120.0,
    ) -> int:
        """Send a local file; returns its size. progress(done, total) gets running totals."""
        return self.push_files([(local, remote)], progress=progress, timeout_s=timeout_s)

    def push_files(
        self,
        files: Sequence[tuple[Path, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float = 120.0,
    ) -> int:
        """Send (local, remote) files over one sync stream -- one stream open and close for all of them,
        which is what a few small files cost most -- and return the bytes sent. progress(done, total)
        counts over the whole batch."""
        with contextlib.ExitStack() as stack:
            sources = [(stack.enter_context(_open_for_push(Path(local))), remote) for local, remote in files]
            sizes = [os.fstat(source.fileno()).st_size for source, _ in sources]
            report = _running_total(progress, sum(sizes))
            with self._errors("push", timeout_s, transfer=True):
                stream = _SyncStream(self._device, timeout_s)
                try:
                    for source, remote in sources:
                        mode = stat_module.S_IFREG | (os.fstat(source.fileno()).st_mode & 0o777)
                        stream.push(source, f"{remote},{mode}".encode(), report)
                except _RemoteFailure:
                    stream.close()
                    raise
                stream.close()
        return sum(sizes)

    def pull(
        self,
        remote: str,
        local: Path,
        *,
        max_bytes: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float = 120.0,
    ) -> int:
        """Fetch a remote file into `local` (written under a temporary name, renamed when complete)."""
        return self.pull_files([(remote, local)], max_bytes=max_bytes, progress=progress, timeout_s=timeout_s)

    def pull_files(
        self,
        files: Sequence[tuple[str, Path]],
        *,
        max_bytes: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float = 120.0,
    ) -> int:
        """Fetch (remote, local) files over one sync stream and return the bytes received.

        Every file is STATed before any is fetched: a missing one raises RemoteFileMissing and one larger
        than `max_bytes` (default DEFAULT_MAX_PULL_BYTES) RemoteFileTooLarge, before anything is
        transferred or written (the connection stays usable). STAT is the phone's word only: a phone that
        then sends more than `max_bytes` is cut off at the limit with RemoteFileTooLarge too, and the
        connection is closed. Each file is written under a temporary name and renamed when complete, so
        a broken or cut-off pull leaves no file (nor a partial one) at `local`."""
        limit = DEFAULT_MAX_PULL_BYTES if max_bytes is None else max_bytes
        partials = [Path(local).with_name(f".{Path(local).name}.{os.getpid()}.partial") for _, local in files]
        try:
            with self._errors("pull", timeout_s, transfer=True):
                stream = _SyncStream(self._device, timeout_s)
                try:
                    sizes = [self._checked_size(stream, remote, limit) for remote, _ in files]
                    report = _running_total(progress, sum(sizes))
                    for (remote, _), partial, size in zip(files, partials, sizes, strict=True):
                        with partial.open("wb") as sink:
                            self._pull_one(stream, remote, sink, report, limit=limit, announced=size)
                except (_RemoteFailure, RemoteFileMissing, RemoteFileTooLarge):
                    if not self._closed:
                        stream.close()
                    raise
                stream.close()
            received = 0
            for (_, local), partial in zip(files, partials, strict=True):
                received += partial.stat().st_size
                os.replace(partial, local)
        except OSError as exc:
            raise TransferFailed(f"cannot write {exc.filename}: {exc.strerror}") from None
        finally:
            for partial in partials:
                with contextlib.suppress(OSError):
                    partial.unlink()
        return received

    def _pull_one(
        self,
        stream: _SyncStream,
        remote: str,
        sink: Any,
        report: Callable[[int], None],
        *,
        limit: int,
        announced: int,
    ) -> None:
        try:
            stream.pull(remote.encode(), sink, report, limit=limit)
        except _PullOverLimit as over:
            self.close()  # the phone is still sending: the stream (and so the connection) is out of step
            raise RemoteFileTooLarge(
                f"pull on {self.target.address}: {remote} sent more than the {limit}-byte limit (its STAT said "
                f"{announced} bytes); cut off, connection closed",
                remote=remote,
                size=over.at_least,
                cut_off=True,
            ) from None

    def _checked_size(self, stream: _SyncStream, remote: str, max_bytes: int) -> int:
        mode, size, mtime = stream.stat(remote.encode())
        if mode == 0 and size == 0 and mtime == 0:
            raise RemoteFileMissing(
                f"pull on {self.target.address}: {remote}: No such file or directory", remote=remote
            )
        if size > max_bytes:
            raise RemoteFileTooLarge(
                f"pull on {self.target.address}: {remote} is {size} bytes, over the {max_bytes}-byte limit",
                remote=remote,
                size=size,
            )
        return size

    def stat(self, remote: str, *, timeout_s: float = 30.0) -> RemoteStat | None:
        """mode/size/mtime of a remote path, None when it does not exist."""
        with self._errors("stat", timeout_s):
            mode, size, mtime = self._device.stat(
                remote, transport_timeout_s=timeout_s, read_timeout_s=timeout_s
            )
        if mode == 0 and size == 0 and mtime == 0:
            return None
        return RemoteStat(mode=mode, size=size, mtime=mtime)

    # --- error mapping --------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._closed:
            raise DeviceOffline(f"connection to {self.target.address} is closed; connect again")

    @contextlib.contextmanager
    def _errors(self, action: str, timeout_s: float, *, transfer: bool = False) -> Iterator[None]:
        """Run one operation under a deadline and translate whatever it raises into our types."""
        self._require_open()
        if self._transport is not None:
            self._transport.deadline = time.monotonic() + timeout_s
        where = f"{action} on {self.target.address}"
        try:
            yield
        except AdbError:
            raise
        except adb_errors.DeviceAuthError as exc:
            self.close()
            raise DeviceUnauthorized(f"{where}: {exc}") from None
        except (_RemoteFailure, adb_errors.AdbCommandFailureException, adb_errors.PushFailedError) as exc:
            raise TransferFailed(f"{where}: {_reason(exc)}") from None
        except (adb_errors.TcpTimeoutException, adb_errors.AdbTimeoutError, TimeoutError) as exc:
            self.close()
            if self._offered_public_key and action == "connect":
                raise DeviceUnauthorized(
                    f"{self.target.address} has not accepted this platform's key; allow USB debugging on the "
                    "phone (check the fingerprint) and connect again"
                ) from None
            kind: type[AdbError] = TransferFailed if transfer else DeviceTimeout
            raise kind(f"{where} timed out after {timeout_s:g} s") from exc
        except _FATAL_ERRORS as exc:
            self.close()
            kind = TransferFailed if transfer else DeviceOffline
            raise kind(f"{where}: {_reason(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - the contract: callers never see a raw exception
            self.close()
            kind = TransferFailed if transfer else DeviceOffline
            raise kind(f"{where}: unexpected {type(exc).__name__}: {exc}") from exc
        finally:
            if self._transport is not None:
                self._transport.deadline = None


class _LineSplitter:
    """Splits a byte stream into lines of at most `limit` bytes (newlines removed). A line that reaches
    the limit is handed out at once, cut there; its rest, up to the next newline, is dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending = bytearray()  # the current line so far, always shorter than the limit
        self._dropping = False  # inside the rest of a line that was cut

    def feed(self, data: bytes) -> list[bytes]:
        pieces = data.split(b"\n")
        lines: list[bytes] = []
        for index, piece in enumerate(pieces):
            ended = index < len(pieces) - 1  # every piece but the last was followed by a newline
            if not self._dropping:
                room = self._limit - len(self._pending)
                self._pending += piece[:room]
                if len(piece) >= room:
                    lines.append(bytes(self._pending))
                    self._pending.clear()
                    self._dropping = True
                elif ended:
                    lines.append(bytes(self._pending))
                    self._pending.clear()
            if ended:
                self._dropping = False
        return lines

    def finish(self) -> list[bytes]:
        """The last line when the stream ended without a newline."""
        line, self._pending = bytes(self._pending), bytearray()
        return [line] if line else []


def _decode_line(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").removesuffix("\r")


@contextlib.contextmanager
def _open_for_push(local: Path) -> Iterator[Any]:
    try:
        source = local.open("rb", buffering=0)
    except OSError as exc:
        raise TransferFailed(f"cannot read {local}: {exc.strerror}") from None
    with source:
        if not stat_module.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise TransferFailed(f"{local} is not a regular file")
        yield source


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, adb_errors.AdbCommandFailureException):
        text = text.removeprefix("Command failed: ")
    return text or type(exc).__name__


def _running_total(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """Turns per-packet byte counts into progress(done, total) calls."""
    done = 0

    def report(moved: int) -> None:
        nonlocal done
        done += moved
        if progress is not None and moved:
            progress(done, total)

    return report


def _signer(private_key_path: Path) -> CryptographySigner:
    """The signer for a key file, parsed once per version of the file: loading and checking an RSA
    private key costs more CPU than the rest of a connect, and a round connects to every phone."""
    info = private_key_path.stat()
    return _cached_signer(str(private_key_path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=8)
def _cached_signer(path: str, mtime_ns: int, size: int) -> CryptographySigner:
    return CryptographySigner(path)


def connect(
    target: Target,
    *,
    identity: AdbIdentity | None = None,
    timeout_s: float = 5.0,
    auth_timeout_s: float = AUTH_PROMPT_WAIT_S,
) -> AdbConnection:
    """Open an authenticated connection (identity None = the platform's key)."""
    identity = identity or platform_identity()
    device, transport = _make_device(target, timeout_s)
    connection = AdbConnection(target, device, transport)
    connection._connect(identity, timeout_s, auth_timeout_s)
    return connection
