"""One ADB connection, device side: handshake, authentication, and multiplexed streams.

Handshake (AOSP protocol.txt, daemon/auth.cpp): host CNXN -> our AUTH(TOKEN); host AUTH(SIGNATURE) that
verifies -> our CNXN with the banner, otherwise a fresh TOKEN; host AUTH(RSAPUBLICKEY) -> silence (a real
phone shows a dialog and waits for a person) unless the phone accepts new keys, which stores the key and
answers CNXN. The version is min(host's, ours); below 0x01000001 every payload carries a byte-sum check.

Streams: OPEN(host_id, 0, "service\\0") -> OKAY(our_id, host_id), or CLSE(0, host_id) to refuse. Each
direction has at most one unacknowledged WRTE; every host CLSE for a live stream is answered with a CLSE
(adb-shell waits for it). A service that must try something before it exists (`tcp:` connects first, as
adbd does) is a DeferredService: its handler runs with the stream not yet acknowledged and calls
`stream.accept()` (OKAY) once it holds what it needs; if it returns without accepting, the OPEN is refused
with CLSE(0, host_id), exactly as for an unknown service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from devices.virtual import auth
from devices.virtual.faults import Throttle
from devices.virtual.packets import (
    AUTH_RSAPUBLICKEY,
    AUTH_SIGNATURE,
    AUTH_TOKEN,
    HEADER_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_PAYLOAD,
    MAX_PAYLOAD_LEGACY,
    VERSION_SKIP_CHECKSUM,
    Command,
    Header,
    MalformedPacket,
    Packet,
    checksum_ok,
    decode_header,
    encode_header,
)

log = logging.getLogger(__name__)

OUR_VERSION = VERSION_SKIP_CHECKSUM
# Bytes a stream may hold unread before we stop acknowledging the host's WRTEs (its flow control).
STREAM_HIGH_WATER = 2 * MAX_PAYLOAD

ServiceHandler = Callable[["AdbStream"], Awaitable[None]]


@dataclass(frozen=True)
class DeferredService:
    """A handler that accepts (or, by returning first, refuses) its stream itself."""

    handler: ServiceHandler


class ServiceHost(Protocol):
    """What a connection needs from its phone."""

    keys: auth.KeyStore

    @property
    def accept_new_keys(self) -> bool: ...

    def banner(self) -> bytes: ...

    def service_for(
        self, name: str, connection: DeviceConnection
    ) -> ServiceHandler | DeferredService | None: ...


class StreamClosed(ConnectionError):
    """The stream (or its whole connection) was closed while a service still used it."""


class AdbStream:
    def __init__(self, connection: DeviceConnection, local_id: int, remote_id: int) -> None:
        self.connection = connection
        self.local_id = local_id
        self.remote_id = remote_id
        self.closed = asyncio.Event()  # either side closed it, or the connection is gone
        self._may_send = asyncio.Event()
        self._may_send.set()
        self._arrived = asyncio.Event()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._okay_owed = False
        self._current = memoryview(b"")
        self._closing = False
        self.accepted = True  # False until a DeferredService accepts: no OKAY has been sent yet

    # --- events from the connection -------------------------------------------------------------
    def has_room_for(self, size: int) -> bool:
        return not self.closed.is_set() and not self._okay_owed and self._buffered + size <= STREAM_HIGH_WATER

    def on_write(self, payload: bytes, *, acknowledged: bool = False) -> None:
        if self.closed.is_set():
            return
        self._chunks.append(payload)
        self._buffered += len(payload)
        self._arrived.set()
        if acknowledged:
            return
        if self._buffered <= STREAM_HIGH_WATER:
            self.connection.send_nowait(Command.OKAY, self.local_id, self.remote_id)
        else:
            self._okay_owed = True

    def on_okay(self) -> None:
        self._may_send.set()

    def on_closed(self) -> None:
        self.closed.set()
        self._may_send.set()
        self._arrived.set()

    # --- used by services -----------------------------------------------------------------------
    def accept(self) -> None:
        """A DeferredService's stream now exists for the host (OKAY)."""
        if not self.accepted and not self.closed.is_set():
            self.accepted = True
            self.connection.send_nowait(Command.OKAY, self.local_id, self.remote_id)

    async def read(self) -> bytes:
        """The next bytes the host wrote; b"" once the stream is closed and drained."""
        if self._current:
            chunk, self._current = bytes(self._current), memoryview(b"")
            return chunk
        while not self._chunks:
            if self.closed.is_set():
                return b""
            self._arrived.clear()
            await self._arrived.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._okay_owed and self._buffered <= STREAM_HIGH_WATER and not self.closed.is_set():
            self._okay_owed = False
            self.connection.send_nowait(Command.OKAY, self.local_id, self.remote_id)
        return chunk

    async def read_exactly(self, size: int) -> bytes:
        parts: list[memoryview] = []
        needed = size
        while needed:
            if not self._current:
                chunk = await self.read()
                if not chunk:
                    raise StreamClosed(f"stream closed with {needed} of {size} bytes missing")
                self._current = memoryview(chunk)
            part = self._current[:needed]
            self._current = self._current[len(part) :]
            parts.append(part)
            needed -= len(part)
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        step = self.connection.max_payload
        for offset in range(0, len(view), step):
            await self._may_send.wait()
            if self.closed.is_set():
                raise StreamClosed("stream closed by the host")
            self._may_send.clear()
            await self.connection.send(
                Command.WRTE, self.local_id, self.remote_id, view[offset : offset + step]
            )

    async def close(self) -> None:
        """Close from our side once the host has taken our last WRTE (CLSE must not overtake data).
        A stream never accepted is refused instead: CLSE(0, host_id), as for an unknown service."""
        if self._closing:
            return
        self._closing = True
        if not self.accepted:
            if not self.closed.is_set():
                self.connection.send_nowait(Command.CLSE, 0, self.remote_id)
        elif not self.closed.is_set():
            await self._may_send.wait()
            if not self.closed.is_set():
                self.connection.send_nowait(Command.CLSE, self.local_id, self.remote_id)
        self.on_closed()
        self.connection.forget(self)


class DeviceConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        phone: ServiceHost,
        *,
        bandwidth_bps: float = 0.0,
        max_version: int = OUR_VERSION,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._phone = phone
        self._max_version = max_version  # 0x01000000 behaves like a pre-Android-9 adbd (checksums)
        self.version = max_version
        self.max_payload = MAX_PAYLOAD_LEGACY
        self._negotiated = False
        self.authorized = False
        self._token = auth.new_token()
        self._streams: dict[int, AdbStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._egress = Throttle(bandwidth_bps)
        self._ingress = Throttle(bandwidth_bps)
        self.peer = str(writer.get_extra_info("peername"))

    # --- sending --------------------------------------------------------------------------------
    @property
    def checksummed(self) -> bool:
        return self.version < VERSION_SKIP_CHECKSUM

    def send_nowait(self, command: Command, arg0: int, arg1: int, payload: bytes = b"") -> None:
        if self._writer.is_closing():
            return
        self._writer.write(encode_header(command, arg0, arg1, payload, checksummed=self.checksummed))
        if payload:
            self._writer.write(payload)

    async def send(self, command: Command, arg0: int, arg1: int, payload: bytes | memoryview = b"") -> None:
        await self._egress.consume(len(payload))
        if self._writer.is_closing():
            raise StreamClosed("connection closed")
        self._writer.write(encode_header(command, arg0, arg1, payload, checksummed=self.checksummed))
        if payload:
            self._writer.write(payload)
        await self._writer.drain()

    def abort(self) -> None:
        """Drop the TCP connection at once, as a phone leaving Wi-Fi does (no CLSE, no FIN handshake)."""
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()

    def forget(self, stream: AdbStream) -> None:
        self._streams.pop(stream.local_id, None)

    # --- receiving ------------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            while True:
                limit = MAX_PAYLOAD if self.authorized else MAX_HANDSHAKE_PAYLOAD
                header = decode_header(await self._reader.readexactly(HEADER_SIZE), max_payload=limit)
                acknowledged = self._acknowledge_early(header)
                payload = await self._reader.readexactly(header.length) if header.length else b""
                packet = Packet(header.command, header.arg0, header.arg1, payload, header.check)
                if self._negotiated and self.checksummed and not checksum_ok(packet):
                    raise MalformedPacket(f"checksum mismatch on {header.command.name}")
                if packet.command is Command.WRTE:
                    await self._ingress.consume(len(packet.payload))
                    self._on_wrte(packet, acknowledged)
                else:
                    await self._handle(packet)
        except MalformedPacket as exc:
            log.info("closing %s: %s", self.peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the host went away
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        for stream in list(self._streams.values()):
            stream.on_closed()
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _handle(self, packet: Packet) -> None:
        if packet.command is Command.CNXN:
            self._on_cnxn(packet)
        elif packet.command is Command.AUTH:
            self._on_auth(packet)
        elif not self.authorized:
            return  # adbd ignores everything else until the host is authenticated
        elif packet.command is Command.OPEN:
            self._on_open(packet)
        elif packet.command is Command.OKAY:
            self._with_stream(packet, AdbStream.on_okay)
        elif packet.command is Command.CLSE:
            self._on_clse(packet)

    def _acknowledge_early(self, header: Header) -> bool:
        """OKAY a WRTE as soon as its header arrives when the stream has room for it: the host may then
        send the next one while this payload is still in flight (a real adbd acknowledges once the data
        is queued, which is the same promise: room for more)."""
        if not self.authorized or header.command is not Command.WRTE:
            return False
        stream = self._streams.get(header.arg1)
        if stream is None or stream.remote_id != header.arg0 or not stream.has_room_for(header.length):
            return False
        self.send_nowait(Command.OKAY, stream.local_id, stream.remote_id)
        return True

    def _on_wrte(self, packet: Packet, acknowledged: bool) -> None:
        stream = self._streams.get(packet.arg1)
        if stream is not None and stream.remote_id == packet.arg0:
            stream.on_write(packet.payload, acknowledged=acknowledged)

    def _with_stream(self, packet: Packet, action: Callable[[AdbStream], None]) -> None:
        stream = self._streams.get(packet.arg1)
        if stream is not None and stream.remote_id == packet.arg0:
            action(stream)

    def _on_cnxn(self, packet: Packet) -> None:
        if packet.arg0 < VERSION_SKIP_CHECKSUM and not checksum_ok(packet):
            raise MalformedPacket("checksum mismatch on CNXN")
        self.version = min(packet.arg0, self._max_version)
        self.max_payload = max(min(packet.arg1, MAX_PAYLOAD), MAX_PAYLOAD_LEGACY)
        self._negotiated = True
        for stream in list(self._streams.values()):  # a new CNXN restarts the session
            stream.on_closed()
        self._streams.clear()
        if self.authorized:
            self._send_banner()
        else:
            self._send_token()

    def _send_token(self) -> None:
        self._token = auth.new_token()
        self.send_nowait(Command.AUTH, AUTH_TOKEN, 0, self._token)

    def _send_banner(self) -> None:
        self.send_nowait(Command.CNXN, self.version, self.max_payload, self._phone.banner())

    def _on_auth(self, packet: Packet) -> None:
        if not self._negotiated or self.authorized:
            return
        if packet.arg0 == AUTH_SIGNATURE:
            if self._phone.keys.is_authorized(self._token, packet.payload):
                self.authorized = True
                self._send_banner()
            else:
                self._send_token()
        elif packet.arg0 == AUTH_RSAPUBLICKEY:
            self._on_public_key(packet.payload)

    def _on_public_key(self, payload: bytes) -> None:
        if not self._phone.accept_new_keys:
            return  # a real phone shows "Allow USB debugging?" and says nothing until someone answers
        try:
            key = auth.parse_key_line(payload.rstrip(b"\0").decode("ascii"))
        except (auth.InvalidKey, UnicodeDecodeError) as exc:
            log.info("ignoring an invalid public key from %s: %s", self.peer, exc)
            return
        self._phone.keys.accept(key)
        self.authorized = True
        self._send_banner()

    def _on_open(self, packet: Packet) -> None:
        host_id = packet.arg0
        name = packet.payload.rstrip(b"\0").decode("utf-8", errors="replace")
        service = self._phone.service_for(name, self) if host_id else None
        if service is None:
            self.send_nowait(Command.CLSE, 0, host_id)
            return
        stream = AdbStream(self, next(self._ids), host_id)
        self._streams[stream.local_id] = stream
        if isinstance(service, DeferredService):
            stream.accepted = False  # the handler accepts once it can (or the OPEN is refused)
            handler = service.handler
        else:
            handler = service
            self.send_nowait(Command.OKAY, stream.local_id, host_id)
        task = asyncio.create_task(self._run_service(handler, stream), name=f"adb-service:{name[:40]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_service(self, handler: ServiceHandler, stream: AdbStream) -> None:
        try:
            await handler(stream)
        except StreamClosed:
            pass
        except Exception:
            log.exception("service failed on %s", self.peer)
        finally:
            await stream.close()

    def _on_clse(self, packet: Packet) -> None:
        stream = self._streams.get(packet.arg1)
        if stream is None or stream.remote_id != packet.arg0:
            return  # our own CLSE's echo, or a stream we already refused
        stream.on_closed()
        self.forget(stream)
        self.send_nowait(Command.CLSE, stream.local_id, stream.remote_id)
