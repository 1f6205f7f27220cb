"""The resident agent's protocol: authenticated frames over one byte stream, and the platform's client.

`agent.pyz serve` (serve.py) listens on the phone's loopback; the platform reaches it through ADB's
`tcp:<port>` stream (devices/adb.py `open_stream`) or any socket, and talks to it with `AgentClient`.
Pure standard library: the platform imports this module without torch.

Frame (all integers big-endian):
    "FFA1"  u32 header length  u64 payload length      16-byte prefix
    header tag                                           32 bytes, HMAC-SHA256
    header                                               compact JSON object, UTF-8
    payload                                              raw bytes (files: safetensors, JSON, agent.pyz)
    payload tag                                          32 bytes, HMAC-SHA256

    header tag  = HMAC(key, "H" ‖ direction ‖ seq ‖ prefix ‖ header)
    payload tag = HMAC(key, "P" ‖ direction ‖ seq ‖ header tag ‖ payload)
direction is "C" (platform → agent) or "A" (agent → platform); seq counts each direction's frames from 0.
The header is checked before the payload is read, so a large payload streams to disk and is kept only
if its tag matches; nothing of a header is parsed before its tag verified.

Keys come from the phone's secret (any app on a phone can connect to its loopback, so the agent trusts
only the secret; it is never sent). The platform opens with `hello` carrying a fresh 16-byte nonce, under
the hello key HMAC(secret, "fedfleet-agent/1 hello"); an agent that cannot verify it closes the connection
without sending a byte. Its answer (same key) echoes that nonce and adds its own; from then on both sides
use the session key HMAC(secret, "fedfleet-agent/1 session" ‖ client nonce ‖ agent nonce), so a frame
recorded on one connection is worthless on any other, and seq stops replays and reordering within one.
The agent also refuses a hello nonce it has already seen (a replayed hello gets nothing).

Requests (platform → agent; every one but hello carries an `id` its answers echo):
    hello    {protocol, nonce}                     -> hello {agent_version, sha256, python, torch, ...}
    put      {path, size} + file bytes             -> ok {path, size, sha256}   (stored atomically)
    get      {path, max_bytes}                     -> file {path, size} + bytes
    remove   {path}                                -> ok {path, removed}
    hashes   {paths: [path, ...]}  (at most 16)    -> ok {sha256: {path: hex digest, or null if no file}}
    train    {round_dir}                           -> event {event: <progress line>}..., then done {event}
    request  {round_dir}                           -> done {event}   (submodel index request)
    result   {round_dir, max_bytes}                -> result {update_size, result_size} + update ‖ result.json
    cancel   {}                                    -> ok {cancelled: bool}; the running train ends in
                                                      error {code: "cancelled"} within a second
    upgrade  {sha256, size} + agent.pyz bytes      -> ok {sha256}; the agent then re-executes itself
    bye      {}                                    -> bye
Failures answer error {id, code, message, ...}; codes: busy, not_found {name}, invalid, too_large {name,
size}, failed, cancelled, unsupported. `path` and `round_dir` are relative to the agent's work dir (where exec mode keeps the same
files). A frame that breaks the format — bad tag, sizes over the limits, unknown type or fields — closes
that connection (with an error frame first when the peer had authenticated); the agent itself goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

PROTOCOL_VERSION = 1
MAGIC = b"FFA1"
PREFIX = struct.Struct(">4sIQ")
TAG_BYTES = 32
NONCE_BYTES = 16
CLIENT = b"C"
AGENT = b"A"

MAX_HEADER_BYTES = 64 * 1024
MAX_HELLO_HEADER_BYTES = 1024  # what an unauthenticated peer may make us read
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30  # the round config's default shard limit
MAX_DEPTH = 6
MAX_STRING_CHARS = 4096
MAX_ITEMS = 256
MAX_ID = 2**53
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
MAX_PATH_CHARS = 512
MAX_PATH_PARTS = 8
MAX_HASH_PATHS = 16
CHUNK_BYTES = 1 << 20

_HELLO_LABEL = b"fedfleet-agent/1 hello"
_SESSION_LABEL = b"fedfleet-agent/1 session"
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SECRET = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it is typed into Termux
_HEX = re.compile(r"[0-9a-f]+")

# type -> the fields it must have (exactly these, plus "type"); bool is never accepted for int.
REQUESTS: dict[str, dict[str, type]] = {
    "hello": {"protocol": int, "nonce": str},
    "put": {"id": int, "path": str, "size": int},
    "get": {"id": int, "path": str, "max_bytes": int},
    "remove": {"id": int, "path": str},
    "hashes": {"id": int, "paths": list},
    "train": {"id": int, "round_dir": str},
    "request": {"id": int, "round_dir": str},
    "result": {"id": int, "round_dir": str, "max_bytes": int},
    "cancel": {"id": int},
    "upgrade": {"id": int, "sha256": str, "size": int},
    "bye": {"id": int},
}
# Requests whose frame carries a payload (all others must have none).
WITH_PAYLOAD = frozenset({"put", "upgrade"})


class ProtocolError(Exception):
    """A frame that breaks the protocol (format, limits, tag, schema): its connection must end."""


class SocketLike(Protocol):
    """What the protocol needs of a connection: a socket, or devices.adb's `tcp:` stream."""

    def sendall(self, data: bytes) -> Any: ...

    def recv(self, size: int) -> bytes: ...

    def settimeout(self, seconds: float | None) -> Any: ...

    def close(self) -> Any: ...


# --- keys, tags, validation (pure) ------------------------------------------------------------------
def secret_bytes(secret: str) -> bytes:
    """The phone's secret as key material, refused when too short or not printable ASCII."""
    if not isinstance(secret, str) or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise ValueError(f"an agent secret needs {MIN_SECRET_CHARS}-{MAX_SECRET_CHARS} characters")
    if not _SECRET.fullmatch(secret):
        raise ValueError("an agent secret is printable ASCII without spaces")
    return secret.encode("ascii")


def hello_key(secret: bytes) -> bytes:
    return hmac.new(secret, _HELLO_LABEL, hashlib.sha256).digest()


def session_key(secret: bytes, client_nonce: bytes, agent_nonce: bytes) -> bytes:
    return hmac.new(secret, _SESSION_LABEL + client_nonce + agent_nonce, hashlib.sha256).digest()


def _header_tag(key: bytes, direction: bytes, seq: int, prefix: bytes, header: bytes) -> bytes:
    message = b"H" + direction + seq.to_bytes(8, "big") + prefix + header
    return hmac.new(key, message, hashlib.sha256).digest()


def _payload_mac(key: bytes, direction: bytes, seq: int, header_tag: bytes) -> Any:
    """An HMAC object the payload is fed into as it streams; its digest() is the payload tag."""
    return hmac.new(key, b"P" + direction + seq.to_bytes(8, "big") + header_tag, hashlib.sha256)


class Session:
    """One side's keys and frame counters. The hello frames use the hello key; `rekey` switches both
    directions to the session key and the counters go on (hello was frame 0 each way)."""

    def __init__(self, key: bytes, *, sending: bytes) -> None:
        if sending not in (CLIENT, AGENT):
            raise ValueError("sending must be CLIENT or AGENT")
        self.key = key
        self.sending = sending
        self.receiving = AGENT if sending == CLIENT else CLIENT
        self.send_seq = 0
        self.recv_seq = 0

    def rekey(self, key: bytes) -> None:
        self.key = key


def encode_header(header: Mapping[str, Any]) -> bytes:
    data = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(data)} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    return data


def decode_header(raw: bytes) -> dict[str, Any]:
    """The header's JSON object, with every value bounded (depth, lengths, numbers) and a string `type`."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ProtocolError(f"header is not valid JSON: {_short(exc)}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header must be a JSON object with a string 'type'")
    _check_value(header, 0)
    return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"header nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise ProtocolError(f"header string of {len(value)} characters (limit {MAX_STRING_CHARS})")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_ID:
            raise ProtocolError("header integer out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("header number is not finite")
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ProtocolError(f"header list of {len(value)} items (limit {MAX_ITEMS})")
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ProtocolError(f"header object of {len(value)} keys (limit {MAX_ITEMS})")
        for key, item in value.items():
            _check_value(key, depth + 1)
            _check_value(item, depth + 1)
    else:  # pragma: no cover - json.loads makes nothing else
        raise ProtocolError(f"unexpected {type(value).__name__} in header")


def check_request(header: Mapping[str, Any], payload_len: int) -> dict[str, Any]:
    """A request header with exactly its type's fields, each of the right type and in range."""
    kind = header.get("type")
    fields = REQUESTS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolError(f"unknown request type {str(kind)[:40]!r}")
    extra = sorted(set(header) - set(fields) - {"type"})
    missing = sorted(set(fields) - set(header))
    if extra or missing:
        raise ProtocolError(f"{kind}: unexpected fields {extra[:5]} / missing fields {missing}")
    for name, wanted in fields.items():
        value = header[name]
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise ProtocolError(f"{kind}: {name} must be {wanted.__name__}")
        if wanted is int and not 0 <= value <= MAX_ID:
            raise ProtocolError(f"{kind}: {name} must be between 0 and 2^53")
        if wanted is list and (len(value) > MAX_HASH_PATHS or not all(isinstance(v, str) for v in value)):
            raise ProtocolError(f"{kind}: {name} must be at most {MAX_HASH_PATHS} strings")
    declared = header["size"] if kind in WITH_PAYLOAD else 0
    if declared != payload_len:
        raise ProtocolError(f"{kind}: the request says {declared} payload bytes, the frame has {payload_len}")
    return dict(header)


def check_relative_path(text: str) -> str:
    """A path under the work dir: up to 8 parts of letters, digits, '.', '_', '-', none starting with a
    dot (so no '..', no hidden files), no absolute paths, no empty parts."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATH_CHARS:
        raise ValueError(f"a path needs 1-{MAX_PATH_CHARS} characters")
    parts = text.split("/")
    if len(parts) > MAX_PATH_PARTS or not all(_PATH_PART.fullmatch(part) for part in parts):
        raise ValueError(
            f"{text[:80]!r} is not a relative path of at most {MAX_PATH_PARTS} plain names "
            "(letters, digits, '.', '_', '-'; none starting with '.')"
        )
    return text


def check_nonce(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * NONCE_BYTES or not _HEX.fullmatch(text):
        raise ProtocolError("nonce must be 32 lowercase hex digits")
    return bytes.fromhex(text)


def _short(exc: BaseException) -> str:
    return str(exc)[:200]


# --- frames (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = MAX_HEADER_BYTES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


HELLO_LIMITS = Limits(MAX_HELLO_HEADER_BYTES, 0)


def parse_prefix(prefix: bytes, limits: Limits) -> tuple[int, int]:
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("not a FedFleet agent frame (bad magic)")
    if not 2 <= header_len <= limits.max_header_bytes:
        raise ProtocolError(f"header of {header_len} bytes (limit {limits.max_header_bytes})")
    if payload_len > limits.max_payload_bytes:
        raise ProtocolError(f"payload of {payload_len} bytes (limit {limits.max_payload_bytes})")
    return header_len, payload_len


def frame_head(session: Session, header: Mapping[str, Any], payload_len: int) -> tuple[bytes, Any]:
    """Prefix, header tag and header of the next outgoing frame, and the MAC its payload feeds.
    Takes the frame's seq: callers serialise their sends."""
    raw = encode_header(header)
    prefix = PREFIX.pack(MAGIC, len(raw), payload_len)
    seq = session.send_seq
    session.send_seq += 1
    tag = _header_tag(session.key, session.sending, seq, prefix, raw)
    return prefix + tag + raw, _payload_mac(session.key, session.sending, seq, tag)


def encode_frame(session: Session, header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    head, mac = frame_head(session, header, len(payload))
    mac.update(payload)
    return head + payload + mac.digest()


@dataclass
class FrameHead:
    header: dict[str, Any]
    payload_len: int
    mac: Any  # fed the payload; its digest must equal the payload tag


def verify_head(session: Session, data: bytes | bytearray, limits: Limits) -> tuple[FrameHead, int] | None:
    """The frame head at the start of `data` once it is all there (None: need more bytes), and its length.
    Raises ProtocolError for a bad prefix or tag, before the header is parsed."""
    if len(data) < PREFIX.size:
        return None
    prefix = bytes(data[: PREFIX.size])
    header_len, payload_len = parse_prefix(prefix, limits)
    end = PREFIX.size + TAG_BYTES + header_len
    if len(data) < end:
        return None
    tag = bytes(data[PREFIX.size : PREFIX.size + TAG_BYTES])
    raw = bytes(data[PREFIX.size + TAG_BYTES : end])
    seq = session.recv_seq
    if not hmac.compare_digest(tag, _header_tag(session.key, session.receiving, seq, prefix, raw)):
        raise ProtocolError("frame failed authentication (wrong secret, replay or corruption)")
    header = decode_header(raw)
    session.recv_seq += 1
    return FrameHead(header, payload_len, _payload_mac(session.key, session.receiving, seq, tag)), end


def decode_frame(
    session: Session, data: bytes, limits: Limits = Limits()
) -> tuple[dict[str, Any], bytes, int] | None:
    """One whole frame from the start of `data`: (header, payload, bytes used), or None if incomplete."""
    probe = Session(session.key, sending=session.sending)
    probe.recv_seq = session.recv_seq
    verified = verify_head(probe, data, limits)
    if verified is None:
        return None
    head, end = verified
    total = end + head.payload_len + TAG_BYTES
    if len(data) < total:
        return None
    payload = bytes(data[end : end + head.payload_len])
    head.mac.update(payload)
    if not hmac.compare_digest(bytes(data[total - TAG_BYTES : total]), head.mac.digest()):
        raise ProtocolError("payload failed authentication")
    session.recv_seq = probe.recv_seq
    return head.header, payload, total


# --- frames over a connection ------------------------------------------------------------------------
class PeerClosed(ConnectionError):
    """The other side closed the connection; `at_boundary` when it did so between frames."""

    def __init__(self, message: str, *, at_boundary: bool) -> None:
        super().__init__(message)
        self.at_boundary = at_boundary


class FrameReader:
    """Reads frames from a socket-like object. Waiting for a head can time out and be retried: bytes
    received so far stay buffered. A payload streams to a sink in chunks and is verified at its end."""

    def __init__(self, sock: SocketLike, session: Session) -> None:
        self._sock = sock
        self.session = session
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _receive(self, at_boundary: bool) -> None:
        chunk = self._sock.recv(CHUNK_BYTES)
        if not chunk:
            raise PeerClosed("the peer closed the connection", at_boundary=at_boundary and not self._buffer)
        self._buffer += chunk

    def read_head(self, limits: Limits) -> FrameHead:
        while True:
            verified = verify_head(self.session, self._buffer, limits)
            if verified is not None:
                head, end = verified
                del self._buffer[:end]
                return head
            self._receive(at_boundary=True)

    def read_payload(self, head: FrameHead, sink: Callable[[bytes], Any] | None) -> None:
        """Feed the payload to `sink` (None: discard) and check its tag; a bad tag raises ProtocolError
        after the sink saw the bytes, so sinks write to a temporary place first."""
        remaining = head.payload_len
        while remaining:
            if not self._buffer:
                self._receive(at_boundary=False)
            take = min(remaining, len(self._buffer), CHUNK_BYTES)
            chunk = bytes(self._buffer[:take])
            del self._buffer[:take]
            head.mac.update(chunk)
            if sink is not None:
                sink(chunk)
            remaining -= take
        while len(self._buffer) < TAG_BYTES:
            self._receive(at_boundary=False)
        tag = bytes(self._buffer[:TAG_BYTES])
        del self._buffer[:TAG_BYTES]
        if not hmac.compare_digest(tag, head.mac.digest()):
            raise ProtocolError("payload failed authentication")

    def read_frame(self, limits: Limits) -> tuple[dict[str, Any], bytes]:
        head = self.read_head(limits)
        parts: list[bytes] = []
        self.read_payload(head, parts.append)
        return head.header, b"".join(parts)


def send_frame(sock: SocketLike, session: Session, header: Mapping[str, Any], payload: bytes = b"") -> None:
    sock.sendall(encode_frame(session, header, payload))


def send_file_frame(
    sock: SocketLike, session: Session, header: Mapping[str, Any], source: BinaryIO, size: int
) -> None:
    """A frame whose payload is the next `size` bytes of `source`, sent in chunks."""
    head, mac = frame_head(session, header, size)
    sock.sendall(head)
    remaining = size
    while remaining:
        chunk = source.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            raise ProtocolError(f"the file ended {remaining} bytes early")
        mac.update(chunk)
        sock.sendall(chunk)
        remaining -= len(chunk)
    sock.sendall(mac.digest())


# --- the platform's client ---------------------------------------------------------------------------
class AgentClientError(Exception):
    """Anything that went wrong talking to an agent."""


class AgentRefused(AgentClientError):
    """The agent closed the connection without answering hello: a wrong or missing secret (or a
    replayed hello). It says nothing more on purpose."""


class AgentConnectionLost(AgentClientError):
    """The stream broke or closed in the middle of a conversation."""


class AgentTimeout(AgentClientError):
    """No answer in time."""


class AgentProtocolViolation(AgentClientError):
    """The agent sent something that is not this protocol (or failed authentication)."""


class AgentRequestFailed(AgentClientError):
    """The agent answered with an error; `code` is one of the protocol's error codes, `details` the
    answer's other fields (too_large and not_found name the file; too_large gives its size)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


class AgentCancelled(AgentRequestFailed):
    """A train (or request) stopped because it was cancelled."""


@dataclass(frozen=True)
class AgentHello:
    protocol: int
    agent_version: str
    sha256: str | None  # of the running agent.pyz (None when it runs from a source tree)
    python: str
    torch: str
    busy: bool
    free_memory_bytes: int | None
    battery: dict[str, Any] | None  # {"level": percent, "status": "Charging"...} when readable
    raw: dict[str, Any]


@dataclass(frozen=True)
class AgentResult:
    update: bytes  # update.safetensors, to be validated as any upload is
    result_json: bytes  # result.json


class AgentClient:
    """The platform's side of one connection. Not thread-safe: one conversation at a time, as over one
    ADB stream. `hello()` must come first. Errors are AgentClientError subclasses; an OSError from the
    stream (including devices.adb's stream errors) becomes AgentConnectionLost / AgentTimeout."""

    def __init__(
        self,
        sock: SocketLike,
        secret: str,
        *,
        timeout_s: float = 30.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self._sock = sock
        _no_delay(sock)
        self._secret = secret_bytes(secret)
        self._session = Session(hello_key(self._secret), sending=CLIENT)
        self._reader = FrameReader(sock, self._session)
        self._limits = Limits(MAX_HEADER_BYTES, max_payload_bytes)
        self.timeout_s = timeout_s
        self._next_id = 1
        self.hello_info: AgentHello | None = None
        self._broken = False

    # --- the conversation ---------------------------------------------------------------------------
    def hello(self) -> AgentHello:
        nonce = os.urandom(NONCE_BYTES)
        self._send({"type": "hello", "protocol": PROTOCOL_VERSION, "nonce": nonce.hex()})
        try:
            header, _ = self._read(self.timeout_s)
        except AgentConnectionLost as exc:
            if isinstance(exc.__cause__, PeerClosed) and exc.__cause__.at_boundary:
                raise AgentRefused(
                    "the agent closed the connection without answering: wrong or missing secret"
                ) from None
            raise
        if header.get("type") != "hello" or header.get("client_nonce") != nonce.hex():
            raise self._violation(f"expected hello echoing our nonce, got {str(header)[:200]}")
        try:
            agent_nonce = check_nonce(header.get("nonce"))
        except ProtocolError as exc:
            raise self._violation(str(exc)) from None
        self._session.rekey(session_key(self._secret, nonce, agent_nonce))
        self.hello_info = _hello_from(header)
        return self.hello_info

    def put(self, path: str, data: bytes) -> dict[str, Any]:
        """Store `data` at `path` under the agent's work dir (atomically); returns {size, sha256}."""
        check_relative_path(path)
        rid = self._request({"type": "put", "path": path, "size": len(data)}, payload=data)
        return self._answer(rid, "ok")[0]

    def put_file(self, path: str, local: Path) -> dict[str, Any]:
        """put() from a local file, streamed (a shard need not fit in memory twice)."""
        check_relative_path(path)
        with Path(local).open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            rid = self._take_id()
            header = {"type": "put", "id": rid, "path": path, "size": size}
            self._guard(lambda: send_file_frame(self._sock, self._session, header, source, size))
        return self._answer(rid, "ok")[0]

    def put_files(self, files: list[tuple[str, Path]]) -> list[dict[str, Any]]:
        """put_file() for several files, pipelined: every frame is sent before the first answer is read
        (the agent answers them in order), so a round's payload costs one round trip, not one per file."""
        rids = []
        for path, local in files:
            check_relative_path(path)
            with Path(local).open("rb") as source:
                size = os.fstat(source.fileno()).st_size
                rid = self._take_id()
                header = {"type": "put", "id": rid, "path": path, "size": size}
                self._guard(
                    lambda h=header, f=source, n=size: send_file_frame(self._sock, self._session, h, f, n)
                )
            rids.append(rid)
        return [self._answer(rid, "ok")[0] for rid in rids]

    def remove_and_hash(self, remove: str, paths: list[str]) -> tuple[bool, dict[str, str | None]]:
        """remove() then hashes(), pipelined (one round trip): what a round's preparation asks."""
        check_relative_path(remove)
        for path in paths:
            check_relative_path(path)
        remove_id = self._request({"type": "remove", "path": remove})
        hashes_id = self._request({"type": "hashes", "paths": list(paths)})
        removed = bool(self._answer(remove_id, "ok")[0].get("removed"))
        answer = self._answer(hashes_id, "ok")[0].get("sha256")
        if not isinstance(answer, dict) or set(answer) != set(paths):
            raise self._violation("hashes answered for other paths")
        return removed, {path: value if isinstance(value, str) else None for path, value in answer.items()}

    def get(self, path: str, *, max_bytes: int) -> bytes:
        check_relative_path(path)
        rid = self._request({"type": "get", "path": path, "max_bytes": int(max_bytes)})
        return self._answer(rid, "file")[1]

    def remove(self, path: str) -> bool:
        """Delete a file or directory tree under the work dir; False if there was nothing."""
        check_relative_path(path)
        rid = self._request({"type": "remove", "path": path})
        return bool(self._answer(rid, "ok")[0].get("removed"))

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 of each file under the work dir (None where there is none): what to put again."""
        for path in paths:
            check_relative_path(path)
        rid = self._request({"type": "hashes", "paths": list(paths)})
        answer = self._answer(rid, "ok")[0].get("sha256")
        if not isinstance(answer, dict) or set(answer) != set(paths):
            raise self._violation("hashes answered for other paths")
        return {path: value if isinstance(value, str) else None for path, value in answer.items()}

    def train(
        self,
        round_dir: str,
        *,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll_s: float = 0.2,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Train the round in `round_dir`; `on_event` gets each progress line (the dicts `agent.pyz train`
        prints), the return value is the final "done" line. `should_cancel` is polled every `poll_s`
        and after each event; once true, a cancel is sent and AgentCancelled raised when the agent
        stopped. Past `timeout_s` AgentTimeout is raised (close the stream: the agent then stops)."""
        check_relative_path(round_dir)
        rid = self._request({"type": "train", "round_dir": round_dir})
        return self._follow(rid, on_event, should_cancel, poll_s, timeout_s)

    def request(self, round_dir: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The submodel index request (as `agent.pyz request`); fetch its file with get()."""
        check_relative_path(round_dir)
        rid = self._request({"type": "request", "round_dir": round_dir})
        return self._follow(rid, None, None, 60.0, timeout_s)

    def result(self, round_dir: str, *, max_bytes: int) -> AgentResult:
        check_relative_path(round_dir)
        rid = self._request({"type": "result", "round_dir": round_dir, "max_bytes": int(max_bytes)})
        header, payload = self._answer(rid, "result")
        update_size, result_size = header.get("update_size"), header.get("result_size")
        if (
            not isinstance(update_size, int)
            or not isinstance(result_size, int)
            or update_size < 0
            or result_size < 0
            or update_size + result_size != len(payload)
        ):
            raise self._violation("result sizes do not add up to its payload")
        return AgentResult(update=payload[:update_size], result_json=payload[update_size:])

    def cancel(self) -> bool:
        """Stop the agent's running train, if any (whoever started it); True if one was running."""
        rid = self._request({"type": "cancel"})
        return bool(self._answer(rid, "ok")[0].get("cancelled"))

    def upgrade(self, pyz: bytes) -> dict[str, Any]:
        """Send a new agent.pyz; the agent checks its sha256, replaces itself and re-executes (this
        connection ends; connect again and hello shows the new hash)."""
        digest = hashlib.sha256(pyz).hexdigest()
        rid = self._request({"type": "upgrade", "sha256": digest, "size": len(pyz)}, payload=pyz)
        return self._answer(rid, "ok")[0]

    def bye(self) -> None:
        rid = self._request({"type": "bye"})
        self._answer(rid, "bye")

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------
    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _request(self, header: dict[str, Any], *, payload: bytes = b"") -> int:
        if self.hello_info is None:
            raise AgentClientError("hello() must come first")
        rid = self._take_id()
        self._send({**header, "id": rid}, payload)
        return rid

    def _send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        self._guard(lambda: send_frame(self._sock, self._session, header, payload))

    def _guard(self, action: Callable[[], Any]) -> Any:
        if self._broken:
            raise AgentConnectionLost("this connection already failed; open a new one")
        try:
            self._sock.settimeout(self.timeout_s)
            return action()
        except TimeoutError as exc:
            self._broken = True
            raise AgentTimeout(f"the agent did not take the data within {self.timeout_s:g} s") from exc
        except OSError as exc:
            self._broken = True
            raise AgentConnectionLost(f"the stream to the agent broke: {exc}") from exc
        except ProtocolError as exc:  # e.g. a file that shrank while it was sent
            self._broken = True
            raise AgentClientError(f"sending failed: {exc}") from exc

    def _read(self, wait_s: float) -> tuple[dict[str, Any], bytes]:
        """The next frame. Waiting for its first bytes may time out (TimeoutError: nothing was consumed,
        call again); once it has begun, the rest must come within the client's timeout."""
        if self._broken:
            raise AgentConnectionLost("this connection already failed; open a new one")
        if not self._reader.buffered:
            try:
                self._sock.settimeout(wait_s)
                self._reader._receive(at_boundary=True)
            except TimeoutError:
                raise
            except OSError as exc:
                self._broken = True
                raise AgentConnectionLost(f"the stream to the agent broke: {exc}") from exc
        try:
            self._sock.settimeout(self.timeout_s)
            return self._reader.read_frame(self._limits)
        except ProtocolError as exc:
            raise self._violation(str(exc)) from None
        except TimeoutError:
            self._broken = True
            raise AgentTimeout(f"a frame from the agent stalled for {self.timeout_s:g} s") from None
        except OSError as exc:
            self._broken = True
            raise AgentConnectionLost(f"the stream to the agent broke: {exc}") from exc

    def _read_or_timeout(self, wait_s: float) -> tuple[dict[str, Any], bytes]:
        try:
            return self._read(wait_s)
        except TimeoutError:
            self._broken = True
            raise AgentTimeout(f"no answer from the agent within {wait_s:g} s") from None

    def _answer(self, rid: int, kind: str) -> tuple[dict[str, Any], bytes]:
        header, payload = self._read_or_timeout(self.timeout_s)
        self._raise_if_error(rid, header)
        if header.get("type") != kind or header.get("id") != rid:
            raise self._violation(f"expected {kind} for request {rid}, got {str(header)[:200]}")
        return header, payload

    def _follow(
        self,
        rid: int,
        on_event: Callable[[dict[str, Any]], Any] | None,
        should_cancel: Callable[[], bool] | None,
        poll_s: float,
        timeout_s: float | None,
    ) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cancel_id: int | None = None
        # Silence is not an error here (a step may take long); the deadline bounds the whole run.
        for header in self._frames_until(deadline, poll_s if should_cancel else 60.0):
            if header is not None:
                self._raise_if_error(rid, header)
                kind, hid = header.get("type"), header.get("id")
                if kind == "done" and hid == rid and isinstance(header.get("event"), dict):
                    return dict(header["event"])
                if kind == "event" and hid == rid and isinstance(header.get("event"), dict):
                    if on_event is not None:
                        on_event(dict(header["event"]))
                elif not (kind == "ok" and hid == cancel_id):
                    raise self._violation(f"unexpected {str(header)[:200]} during request {rid}")
            if cancel_id is None and should_cancel is not None and should_cancel():
                cancel_id = self._request({"type": "cancel"})
        raise AssertionError("unreachable")  # pragma: no cover

    def _frames_until(self, deadline: float | None, wait_s: float) -> Iterator[dict[str, Any] | None]:
        """Frames as they come; None each time `wait_s` passed without one (time to poll)."""
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._broken = True
                raise AgentTimeout("the agent did not finish in time")
            wait = wait_s if remaining is None else max(min(wait_s, remaining), 0.001)
            try:
                header = self._read(wait)[0]
            except TimeoutError:
                yield None
                continue
            yield header

    def _raise_if_error(self, rid: int, header: Mapping[str, Any]) -> None:
        if header.get("type") != "error":
            return
        code, message = str(header.get("code", "failed")), str(header.get("message", ""))
        if header.get("id") not in (rid, None):
            raise self._violation(f"error for another request: {code}: {message}")
        details = {k: v for k, v in header.items() if k not in ("type", "id", "code", "message")}
        raise (AgentCancelled if code == "cancelled" else AgentRequestFailed)(code, message, details)

    def _violation(self, message: str) -> AgentProtocolViolation:
        self._broken = True
        return AgentProtocolViolation(message)


def _no_delay(sock: SocketLike) -> None:
    """TCP_NODELAY on a real socket (an `adb forward` port): each request waits for its answer, and Nagle
    would hold a small frame back until the peer's delayed ACK, 40 ms a round trip."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        try:
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, TypeError, ValueError):
            pass  # not a TCP socket (a Unix socket, a test double)


def _hello_from(header: Mapping[str, Any]) -> AgentHello:
    def text(key: str) -> str:
        value = header.get(key)
        return value if isinstance(value, str) else ""

    sha = header.get("sha256")
    memory = header.get("free_memory_bytes")
    battery = header.get("battery")
    protocol = header.get("protocol")
    return AgentHello(
        protocol=protocol if isinstance(protocol, int) else 0,
        agent_version=text("agent_version"),
        sha256=sha if isinstance(sha, str) else None,
        python=text("python"),
        torch=text("torch"),
        busy=header.get("busy") is True,
        free_memory_bytes=memory if isinstance(memory, int) and not isinstance(memory, bool) else None,
        battery=battery if isinstance(battery, dict) else None,
        raw=dict(header),
    )
