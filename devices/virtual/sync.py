"""The `sync:` service (AOSP SYNC.TXT, protocol v1) behind `adb push`, `adb pull`, stat and ls.

A byte stream that ignores WRTE boundaries. Requests: 4-byte id, u32 length, payload. STAT -> `STAT mode
size mtime` (all zero when missing); LIST -> `DENT mode size mtime namelen name`..., then an all-zero DONE;
SEND "path,<decimal mode>" then DATA chunks (<= 64 KiB) and `DONE mtime` -> `OKAY 0` or `FAIL len msg`;
RECV path -> DATA chunks then `DONE 0`, or FAIL; QUIT ends the session.

Pushed data goes to a temporary file that takes the real name only at DONE, so a dropped push never leaves
a half-written file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from devices.virtual.faults import FaultInjector, TransferPlan
from devices.virtual.sandbox import Sandbox, SandboxError
from devices.virtual.transport import AdbStream

SYNC_DATA_MAX = 64 * 1024
MAX_PATH = 1024
REQUEST = struct.Struct("<4sI")
STAT_REPLY = struct.Struct("<4sIII")
DENT = struct.Struct("<4sIIII")


class SyncProtocolError(Exception):
    """The host broke the sync protocol; the stream is closed after a FAIL."""


class TransferWatch:
    """Applies a transfer's fault plan as bytes move: a stall, or dropping the whole connection."""

    def __init__(self, plan: TransferPlan, drop: Callable[[], None]) -> None:
        self._plan = plan
        self._drop = drop
        self._moved = 0
        self._stalled = False

    async def moved(self, nbytes: int) -> None:
        self._moved += nbytes
        plan = self._plan
        if plan.stall_at_byte is not None and not self._stalled and self._moved >= plan.stall_at_byte:
            self._stalled = True
            await asyncio.sleep(plan.stall_s)
        if plan.drop_at_byte is not None and self._moved >= plan.drop_at_byte:
            self._abort()

    def finished(self) -> None:
        """A drop planned past the end of a short file happens before the final reply."""
        if self._plan.drop_at_byte is not None:
            self._abort()

    def _abort(self) -> None:
        self._drop()
        raise ConnectionAbortedError("fault injection: connection dropped mid-transfer")


class SyncSession:
    def __init__(
        self,
        stream: AdbStream,
        sandbox: Sandbox,
        faults: FaultInjector,
        on_transfer: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._stream = stream
        self._sandbox = sandbox
        self._faults = faults
        self._out = bytearray()
        self._on_transfer = on_transfer

    async def run(self) -> None:
        while True:
            header = await self._stream.read_exactly(REQUEST.size)
            request_id, length = REQUEST.unpack(header)
            if request_id == b"QUIT":
                return
            if length > MAX_PATH:
                await self._fail("path too long")
                return
            path = (await self._stream.read_exactly(length)).decode("utf-8", errors="replace")
            if request_id == b"STAT":
                await self._stat(path)
            elif request_id == b"LIST":
                await self._list(path)
            elif request_id == b"SEND":
                await self._send(path)
            elif request_id == b"RECV":
                await self._recv(path)
            else:
                await self._fail(f"unknown sync command {request_id!r}")
                return

    # --- replies ------------------------------------------------------------------------------
    async def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            await self._stream.write(data)

    async def _queue(self, data: bytes) -> None:
        """Coalesce small replies into WRTEs of up to the negotiated payload size."""
        self._out += data
        if len(self._out) >= self._stream.connection.max_payload:
            await self._flush()

    async def _fail(self, message: str) -> None:
        encoded = message.encode("utf-8")
        await self._queue(REQUEST.pack(b"FAIL", len(encoded)) + encoded)
        await self._flush()

    # --- requests -----------------------------------------------------------------------------
    async def _stat(self, path: str) -> None:
        try:
            info = self._sandbox.resolve(path).stat()
            reply = STAT_REPLY.pack(b"STAT", info.st_mode, info.st_size & 0xFFFFFFFF, int(info.st_mtime))
        except OSError:
            reply = STAT_REPLY.pack(b"STAT", 0, 0, 0)
        await self._queue(reply)
        await self._flush()

    async def _list(self, path: str) -> None:
        try:
            directory = self._sandbox.resolve(path)
            names = [".", ".."] + sorted(os.listdir(directory))
        except OSError:
            names, directory = [], Path()
        for name in names:
            try:
                info = (directory / name).lstat()
            except OSError:
                continue
            encoded = name.encode("utf-8")
            mtime = int(info.st_mtime)
            dent = DENT.pack(b"DENT", info.st_mode, info.st_size & 0xFFFFFFFF, mtime, len(encoded))
            await self._queue(dent + encoded)
        await self._queue(DENT.pack(b"DONE", 0, 0, 0, 0))
        await self._flush()

    async def _send(self, spec: str) -> None:
        path, _, mode_text = spec.rpartition(",")
        error = ""
        try:
            mode = int(mode_text)
            if stat.S_ISLNK(mode):
                raise SandboxError(errno.EPERM, path)  # symlinks could point out of the sandbox
            target = self._sandbox.resolve(path, write=True)
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            target.parent.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:
            error = _describe(exc, path)
            await self._discard_until_done()
            await self._fail(error)
            return
        await self._receive_file(target, mode)

    async def _receive_file(self, target: Path, mode: int) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(self)}.partial")
        watch = TransferWatch(self._faults.plan_transfer(1 << 20), self._stream.connection.abort)
        if self._on_transfer is not None:
            await self._on_transfer()
        try:
            with tmp.open("wb") as sink:
                mtime = await self._copy_data_chunks(sink, watch)
            os.chmod(tmp, (mode & 0o777) or 0o644)
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, target)
        except SyncProtocolError as exc:
            await self._fail(str(exc))
            raise
        except OSError as exc:
            if isinstance(exc, ConnectionError):
                raise
            await self._discard_until_done()
            await self._fail(_describe(exc, target.name))
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        await self._queue(REQUEST.pack(b"OKAY", 0))
        await self._flush()

    async def _copy_data_chunks(self, sink: BinaryIO, watch: TransferWatch) -> int:
        while True:
            chunk_id, length = REQUEST.unpack(await self._stream.read_exactly(REQUEST.size))
            if chunk_id == b"DONE":
                watch.finished()
                return length  # DONE carries the mtime in its length field
            if chunk_id != b"DATA" or length > SYNC_DATA_MAX:
                raise SyncProtocolError(f"unexpected {chunk_id!r} ({length} bytes) during SEND")
            sink.write(await self._stream.read_exactly(length))
            await watch.moved(length)

    async def _discard_until_done(self) -> None:
        """Keep reading after an error until DONE, as adbd does, so the host's stream stays in step."""
        while True:
            chunk_id, length = REQUEST.unpack(await self._stream.read_exactly(REQUEST.size))
            if chunk_id == b"DONE":
                return
            if chunk_id != b"DATA" or length > SYNC_DATA_MAX:
                raise SyncProtocolError(f"unexpected {chunk_id!r} during SEND")
            await self._stream.read_exactly(length)

    async def _recv(self, path: str) -> None:
        try:
            source = self._sandbox.resolve(path)
            handle = source.open("rb")
        except (OSError, ValueError) as exc:
            await self._fail(_describe(exc, path))
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            watch = TransferWatch(self._faults.plan_transfer(size), self._stream.connection.abort)
            if self._on_transfer is not None:
                await self._on_transfer()
            while block := handle.read(SYNC_DATA_MAX):
                await self._queue(REQUEST.pack(b"DATA", len(block)) + block)
                await watch.moved(len(block))
            watch.finished()
        await self._queue(REQUEST.pack(b"DONE", 0))
        await self._flush()


def _describe(exc: BaseException, path: str) -> str:
    if isinstance(exc, SandboxError):
        return f"secure_mkdirs() / open failed: {path}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: {exc.strerror}"
    return f"{path}: {exc}"
