"""A small hostile adbd for unit tests of devices/adb.py: the real wire protocol (packets of
devices.virtual.packets; CNXN without AUTH, OPEN/OKAY/WRTE/CLSE, the sync service), but the test decides
what it answers — a STAT that lies, endless DATA, a FAIL announcing 100 MB, output without newlines,
packets for streams nobody opened. It never honours flow control, as a hostile phone would not.

    with HostileAdbd(on_recv=lambda path, out: endless_data(out)) as phone:
        connect(Target("tcp", phone.address), identity=...)

One connection at a time, each served by a thread; a handler runs until it returns or the client hangs
up (its writes then fail and the thread ends).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

from devices.virtual.packets import (
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    VERSION_SKIP_CHECKSUM,
    Command,
    Packet,
    encode,
)

BANNER = b"device::ro.product.name=hostile;ro.product.model=Hostile;ro.product.device=hostile;features=\0"
SYNC = struct.Struct("<4sI")
STAT_REPLY = struct.Struct("<4sIII")
REGULAR_FILE = 0o100644


class Stream:
    """Write side of one opened stream, as the handler sees it."""

    def __init__(self, server: _Connection, device_id: int, host_id: int) -> None:
        self._server = server
        self.device_id = device_id
        self.host_id = host_id

    def write(self, payload: bytes) -> None:
        """One WRTE per call (payload at most MAX_PAYLOAD), without waiting for the host's OKAY."""
        self._server.send(Packet(Command.WRTE, self.device_id, self.host_id, payload))

    def write_to(self, host_id: int, payload: bytes) -> None:
        """A WRTE addressed to a stream the host never opened."""
        self._server.send(Packet(Command.WRTE, self.device_id, host_id, payload))

    def sync(self, request_id: bytes, value: int, payload: bytes = b"") -> None:
        self.write(SYNC.pack(request_id, value) + payload)


ShellHandler = Callable[[bytes, Stream], None]  # (command, stream); the stream is closed after it returns
StatHandler = Callable[[bytes, Stream], None]  # (path, stream): answer with stream.write(STAT_REPLY...)
RecvHandler = Callable[[bytes, Stream], None]  # (path, stream): DATA.../DONE or FAIL


def stat_answer(size: int, mode: int = REGULAR_FILE) -> StatHandler:
    return lambda path, stream: stream.write(STAT_REPLY.pack(b"STAT", mode, size, 1_700_000_000))


class _Connection:
    def __init__(self, sock: socket.socket, adbd: HostileAdbd) -> None:
        self.sock = sock
        self.adbd = adbd
        self._lock = threading.Lock()
        self._next_id = 100

    def send(self, packet: Packet) -> None:
        with self._lock:
            self.sock.sendall(encode(packet, checksummed=False))

    def _read_exactly(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            data = self.sock.recv(size - len(chunks))
            if not data:
                raise ConnectionResetError("host hung up")
            chunks += data
        return bytes(chunks)

    def serve(self) -> None:
        sync_buffers: dict[int, bytearray] = {}  # device id -> sync bytes not yet parsed
        streams: dict[int, Stream] = {}
        while True:
            command, arg0, arg1, length, _, _ = HEADER.unpack(self._read_exactly(HEADER_SIZE))
            payload = self._read_exactly(length) if length else b""
            if command == Command.CNXN:
                self.send(Packet(Command.CNXN, VERSION_SKIP_CHECKSUM, MAX_PAYLOAD, BANNER))
            elif command == Command.OPEN:
                self._next_id += 1
                stream = Stream(self, self._next_id, arg0)
                streams[stream.device_id] = stream
                self.send(Packet(Command.OKAY, stream.device_id, arg0))
                service = payload.rstrip(b"\0")
                if service.startswith(b"shell:"):
                    self.adbd.on_shell(service.removeprefix(b"shell:"), stream)
                    self.send(Packet(Command.CLSE, stream.device_id, arg0))
                elif service == b"sync:":
                    sync_buffers[stream.device_id] = bytearray()
            elif command == Command.WRTE:
                self.send(Packet(Command.OKAY, arg1, arg0))
                if arg1 in sync_buffers:
                    sync_buffers[arg1] += payload
                    self._sync_requests(sync_buffers[arg1], streams[arg1])
            elif command == Command.CLSE:
                self.send(Packet(Command.CLSE, arg1, arg0))
                sync_buffers.pop(arg1, None)

    def _sync_requests(self, buffer: bytearray, stream: Stream) -> None:
        while len(buffer) >= SYNC.size:
            request_id, length = SYNC.unpack_from(buffer)
            if len(buffer) < SYNC.size + length:
                return
            path = bytes(buffer[SYNC.size : SYNC.size + length])
            del buffer[: SYNC.size + length]
            if request_id == b"STAT":
                self.adbd.on_stat(path, stream)
            elif request_id == b"RECV":
                self.adbd.on_recv(path, stream)


class HostileAdbd:
    def __init__(
        self,
        *,
        on_shell: ShellHandler | None = None,
        on_stat: StatHandler | None = None,
        on_recv: RecvHandler | None = None,
    ) -> None:
        self.on_shell: ShellHandler = on_shell or (lambda command, stream: None)
        self.on_stat: StatHandler = on_stat or stat_answer(0, mode=0)
        self.on_recv: RecvHandler = on_recv or (lambda path, stream: stream.sync(b"DONE", 0))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # what ended each connection (hang-ups are expected)
        self._accepting = threading.Thread(target=self._accept, name="hostile-adbd", daemon=True)

    def __enter__(self) -> HostileAdbd:
        self._accepting.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                _Connection(sock, self).serve()
            except (OSError, struct.error) as exc:
                self.errors.append(exc)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
