"""`agent.pyz serve --port P`: the resident agent, listening on the phone's loopback (protocol.py).

One process keeps torch imported and the job's data shard in memory between rounds, and runs the same
code as exec mode (runner.py's run_train / run_request) on the same files in the same work dir: `put`
stores a file where exec mode's push would have put it, `train` runs the round dir's config.

Threads: the main thread accepts; each connection has its own thread; a train or request runs in one task
thread at a time (a second one is refused as busy) that checks a cancel flag after every step. A train
belongs to the connection that started it: if that connection ends, the train is cancelled (as closing
the shell stream kills an exec-mode agent). A cancel request works from any authenticated connection.

Faults are inputs: a frame that fails authentication or breaks the format ends its connection only, and
an unauthenticated peer gets no byte back (not even an error): it must finish hello within
HANDSHAKE_TIMEOUT_S or is dropped. At most MAX_CONNECTIONS connections are served at once.

Virtual phones share one host, so their "loopback ports" cannot be real ports: when FEDFLEET_LOOPBACK_DIR
is set (the virtual phone sets it), the agent binds an OS-chosen port on 127.0.0.1 and records
`<dir>/<P>` = that port, which the virtual phone's `tcp:P` service looks up (devices/virtual/README.md).
Unset, as on a real phone, it binds 127.0.0.1:P itself.

Upgrade: the new agent.pyz arrives as a payload, is checked (sha256 as announced, a zip with
__main__.py), replaces the running archive atomically (rename) and the process re-executes itself with
the same arguments — same pid, so whoever supervises it (Termux, a pid file) sees the same process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import stat as stat_module
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

import torch

from training.agent import AGENT_VERSION
from training.agent.protocol import (
    AGENT,
    DEFAULT_MAX_PAYLOAD_BYTES,
    HELLO_LIMITS,
    MAX_HEADER_BYTES,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    FrameHead,
    FrameReader,
    Limits,
    PeerClosed,
    ProtocolError,
    Session,
    check_nonce,
    check_relative_path,
    check_request,
    hello_key,
    secret_bytes,
    send_file_frame,
    send_frame,
    session_key,
)
from training.agent.round_config import RESULT_FILE, UPDATE_FILE, AgentError, RoundConfig
from training.agent.runner import TrainingCancelled, emit, load_shard, run_request, run_train

SECRET_ENV = "FEDFLEET_AGENT_SECRET"  # noqa: S105 - the variable's name, not a secret
LOOPBACK_DIR_ENV = "FEDFLEET_LOOPBACK_DIR"
HANDSHAKE_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 60.0  # a frame that has begun must keep moving
IDLE_TIMEOUT_S = 900.0  # an authenticated connection with nothing to do
MAX_CONNECTIONS = 8
REPLAY_MEMORY = 4096  # hello nonces remembered
MAX_RESULT_JSON_BYTES = 1 << 20
AGENT_FILE = "agent.pyz"
POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")


@dataclass(frozen=True)
class ServeConfig:
    port: int  # the phone's loopback port
    secret: bytes
    work_dir: Path
    argv: tuple[str, ...] = ()  # what to re-execute with after an upgrade
    host: str = "127.0.0.1"
    loopback_dir: Path | None = None  # virtual phones: where phone ports map to host ports
    max_connections: int = MAX_CONNECTIONS
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    io_timeout_s: float = IO_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_file_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    power_supply_root: Path = POWER_SUPPLY_ROOT


class ServeError(RuntimeError):
    """The agent cannot serve as asked (port in use, bad work dir)."""


# --- what the agent reports about its phone ---------------------------------------------------------
def free_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")[:8192]
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            number = value.strip().removesuffix("kB").strip()
            return int(number) * 1024 if number.isdigit() else None
    return None


def battery_status(root: Path = POWER_SUPPLY_ROOT) -> dict[str, Any] | None:
    """The first battery under /sys/class/power_supply: {"level": %, "status": "Charging"...}, or None
    (apps often may not read it; then the platform's dumpsys battery over ADB still tells)."""
    try:
        supplies = sorted(root.iterdir())[:32]
    except OSError:
        return None
    for supply in supplies:
        if _small_read(supply / "type") != "Battery":
            continue
        capacity = _small_read(supply / "capacity")
        if capacity is None or not capacity.isdigit() or int(capacity) > 100:
            continue
        status = _small_read(supply / "status")
        return {"level": int(capacity), "status": status if status and status.isprintable() else None}
    return None


def _small_read(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return handle.read(64).decode("ascii", errors="replace").strip()
    except OSError:
        return None


def archive_sha256(archive: Path | None) -> str | None:
    if archive is None:
        return None
    digest = hashlib.sha256()
    with archive.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_agent_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "__main__.py" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


# --- the job's data, kept in memory -----------------------------------------------------------------
class ShardCache:
    """load_shard, remembered for the last shard file (by identity and the model it was checked for):
    the next round of the same job does not read or check the file again. Training never writes to the
    shard tensors (it indexes them; misbehaviours clone first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None
        self.hits = 0

    def __call__(self, config: RoundConfig) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            info = config.shard.stat()
        except OSError:
            return load_shard(config)  # it reports the missing file its own way
        key = (
            str(config.shard.resolve()),
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            json.dumps(config.model, sort_keys=True, default=str),
            config.max_shard_bytes,
        )
        with self._lock:
            if key == self._key and self._value is not None:
                self.hits += 1
                return self._value
            self._key, self._value = None, None  # release the old shard before loading the new one
            value = load_shard(config)
            self._key, self._value = key, value
            return value


# --- file places under the work dir -----------------------------------------------------------------
class BadPath(ValueError):
    pass


def place(work_dir: Path, relative: str) -> Path:
    """The host path for a protocol path, refused if it leaves the work dir (through a symlink too) or
    names the running agent."""
    try:
        check_relative_path(relative)
    except ValueError as exc:
        raise BadPath(str(exc)) from None
    if relative == AGENT_FILE:
        raise BadPath("agent.pyz is replaced only by upgrade")
    root = work_dir.resolve()
    target = root / relative
    real = Path(os.path.realpath(target))
    if real != target and not str(real).startswith(str(root) + os.sep):
        raise BadPath(f"{relative} leads outside the work dir")
    return target


# --- the server -------------------------------------------------------------------------------------
@dataclass
class _Task:
    id: int
    kind: str
    owner: _Connection
    cancel: threading.Event = field(default_factory=threading.Event)
    round_dir: Path | None = None


class AgentServer:
    def __init__(
        self,
        config: ServeConfig,
        *,
        environ: Mapping[str, str],
        log: TextIO,
        archive: Path | None,
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.environ = environ
        self.archive = archive
        self.sha256 = archive_sha256(archive)
        self.shards = ShardCache()
        self._log = log
        self._log_lock = threading.Lock()
        self._restart = restart
        self._listener: socket.socket | None = None
        self._listening = False
        self._stop = threading.Event()
        self._restart_wanted = False
        self._task: _Task | None = None
        self._task_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._connections: set[_Connection] = set()
        self._connections_lock = threading.Lock()
        self._nonces: OrderedDict[bytes, None] = OrderedDict()
        self._hashes: OrderedDict[str, tuple[tuple[int, int, int], str]] = OrderedDict()
        self._hashes_lock = threading.Lock()
        self._nonces_lock = threading.Lock()
        self.bound_port = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> None:
        with self._log_lock:
            with contextlib.suppress(OSError, ValueError):
                emit(self._log, event, **fields)

    def bind(self) -> int:
        """Listen on the phone's loopback (see the module docstring); returns the host port."""
        registry = self.config.loopback_dir
        if registry is not None:
            self._refuse_if_port_taken(registry)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.config.host, 0 if registry is not None else self.config.port))
            listener.listen(16)
        except OSError as exc:
            listener.close()
            raise ServeError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}"
            ) from None
        listener.settimeout(0.5)  # the accept loop looks at the stop flag this often
        self._listener = listener
        self._listening = True
        self.bound_port = listener.getsockname()[1]
        if registry is not None:
            registry.mkdir(parents=True, exist_ok=True)
            tmp = registry / f".{self.config.port}.{os.getpid()}.tmp"
            tmp.write_text(f"{self.bound_port}\n", encoding="ascii")
            os.replace(tmp, registry / str(self.config.port))
        return self.bound_port

    def _refuse_if_port_taken(self, registry: Path) -> None:
        """A second agent on the same phone port fails as bind() would on a phone (EADDRINUSE)."""
        entry = registry / str(self.config.port)
        try:
            host_port = int(entry.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", host_port), timeout=0.5):
            raise ServeError(
                f"cannot listen on {self.config.host}:{self.config.port}: Address already in use"
            )

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        self.log(
            "serving",
            port=self.config.port,
            bound_port=self.bound_port,
            pid=os.getpid(),
            version=AGENT_VERSION,
            sha256=self.sha256,
        )
        try:
            while not self._stop.is_set():
                if not self._listening:  # an upgrade is answering its client; stop follows
                    self._stop.wait(0.5)
                    continue
                try:
                    sock, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set() or not self._listening:
                        continue
                    raise
                self._admit(sock)
        finally:
            self._close_everything()
        if self._restart_wanted:
            self.log("restarting", pid=os.getpid())
            if self._restart is not None:
                self._restart()

    def stop(self) -> None:
        self._stop.set()

    def _admit(self, sock: socket.socket) -> None:
        if not self._slots.acquire(blocking=False):
            sock.close()  # full: no byte to a peer we do not know yet
            return
        # Frames are small and answered at once: without this, Nagle holds an answer back until the
        # peer's delayed ACK (40 ms per round trip).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, sock)
        with self._connections_lock:
            self._connections.add(connection)
        thread = threading.Thread(target=self._run_connection, args=(connection,), daemon=True)
        thread.start()

    def _run_connection(self, connection: _Connection) -> None:
        try:
            connection.run()
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            self._slots.release()

    def _close_everything(self) -> None:
        self._stop_listening()
        self.cancel_task()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            connection.shut()

    def _stop_listening(self) -> None:
        """No new connections from now on (the phone's port is free: connecting is refused)."""
        self._listening = False
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (Linux)
            self._listener.close()
        registry = self.config.loopback_dir
        if registry is not None:
            entry = registry / str(self.config.port)
            with contextlib.suppress(OSError, ValueError):
                if int(entry.read_text(encoding="ascii").strip()) == self.bound_port:
                    entry.unlink()

    def prepare_restart(self) -> None:
        """Stop listening at once: a client that reconnects after the upgrade's answer must reach the new
        agent, never this one on its way out. request_restart() follows once the answer is sent."""
        self._restart_wanted = True
        self._stop_listening()

    def request_restart(self) -> None:
        """Leave serve_forever (closing every connection) and re-execute."""
        self._restart_wanted = True
        self._stop_listening()
        self._stop.set()

    # --- shared state -------------------------------------------------------------------------------
    def remember_nonce(self, nonce: bytes) -> bool:
        """False if this hello nonce was seen before (a replayed hello)."""
        with self._nonces_lock:
            if nonce in self._nonces:
                return False
            self._nonces[nonce] = None
            while len(self._nonces) > REPLAY_MEMORY:
                self._nonces.popitem(last=False)
            return True

    @property
    def busy(self) -> bool:
        return self._task is not None

    def start_task(self, task: _Task, work: Callable[[_Task], None]) -> bool:
        with self._task_lock:
            if self._task is not None:
                return False
            self._task = task
        thread = threading.Thread(target=self._run_task, args=(task, work), daemon=True, name=task.kind)
        thread.start()
        return True

    def _run_task(self, task: _Task, work: Callable[[_Task], None]) -> None:
        try:
            work(task)
        finally:
            self.finish_task(task)

    def finish_task(self, task: _Task) -> None:
        """Free the task slot (idempotent)."""
        with self._task_lock:
            if self._task is task:
                self._task = None

    def cancel_task(self, owner: _Connection | None = None) -> bool:
        """Cancel the running task (only if `owner` started it, when given); True if one was running."""
        with self._task_lock:
            task = self._task
        if task is None or (owner is not None and task.owner is not owner):
            return False
        task.cancel.set()
        return True

    def running_task(self) -> _Task | None:
        return self._task

    def file_hashes(self, path: Path) -> str | None:
        """sha256 of a regular file, remembered by its identity (a 1 GiB shard is hashed once)."""
        try:
            info = path.stat()
        except OSError:
            return None
        if not stat_module.S_ISREG(info.st_mode):
            return None
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._hashes_lock:
            known = self._hashes.get(str(path))
            if known is not None and known[0] == key:
                return known[1]
        digest = archive_sha256(path)
        with self._hashes_lock:
            self._hashes[str(path)] = (key, digest or "")
            while len(self._hashes) > 64:
                self._hashes.popitem(last=False)
        return digest

    def hello_fields(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "sha256": self.sha256,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "pid": os.getpid(),
            "busy": self.busy,
            "free_memory_bytes": free_memory_bytes(),
            "battery": battery_status(self.config.power_supply_root),
        }


class _LineEvents:
    """A text stream for runner.py's emit(): each JSON line it writes becomes a callback."""

    def __init__(self, on_line: Callable[[dict[str, Any]], None]) -> None:
        self._on_line = on_line
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if line.strip():
                self._on_line(json.loads(line))
        return len(text)

    def flush(self) -> None:
        return None


class _Connection:
    def __init__(self, server: AgentServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.session = Session(hello_key(server.config.secret), sending=AGENT)
        self.reader = FrameReader(sock, self.session)
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self.authenticated = False
        self._last_activity = time.monotonic()
        self._limits = Limits(MAX_HEADER_BYTES, server.config.max_file_bytes)

    # --- life ---------------------------------------------------------------------------------------
    def run(self) -> None:
        reason = "closed"
        try:
            if self._handshake():
                self._serve_requests()
        except PeerClosed:
            reason = "peer closed"
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            if self.authenticated:
                self._try_send_error(None, "invalid", str(exc))
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.server.cancel_task(owner=self)
            self.shut()
            if self.authenticated or reason.startswith("protocol"):
                self.server.log("connection_closed", reason=reason[:300], authenticated=self.authenticated)

    def shut(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _handshake(self) -> bool:
        """hello under the hello key; anything else — or nothing within the handshake timeout — closes
        the connection without a byte sent."""
        config = self.server.config
        timer = threading.Timer(config.handshake_timeout_s, self.shut)
        timer.daemon = True
        timer.start()
        try:
            self.sock.settimeout(config.handshake_timeout_s)
            head = self.reader.read_head(HELLO_LIMITS)
            self.reader.read_payload(head, None)
            request = check_request(head.header, head.payload_len)
            if request["type"] != "hello":
                raise ProtocolError("the first frame must be hello")
            client_nonce = check_nonce(request["nonce"])
            if not self.server.remember_nonce(client_nonce):
                raise ProtocolError("replayed hello")
        except (ProtocolError, OSError) as exc:
            if not isinstance(exc, PeerClosed):
                self.server.log("refused", reason=str(exc)[:200])
            return False
        finally:
            timer.cancel()
        if request["protocol"] != PROTOCOL_VERSION:
            self.server.log("refused", reason=f"protocol {request['protocol']}")
            return False
        agent_nonce = os.urandom(NONCE_BYTES)
        self.authenticated = True
        self.sock.settimeout(config.io_timeout_s)
        self.send(
            {
                "type": "hello",
                "client_nonce": client_nonce.hex(),
                "nonce": agent_nonce.hex(),
                **self.server.hello_fields(),
            }
        )
        self.session.rekey(session_key(config.secret, client_nonce, agent_nonce))
        return True

    def _serve_requests(self) -> None:
        while not self._closed.is_set():
            if not self._wait_for_frame():
                return
            head = self.reader.read_head(self._limits)
            self._last_activity = time.monotonic()
            request = check_request(head.header, head.payload_len)
            handler = getattr(self, f"_on_{request['type']}")
            if not handler(request, head):
                return
            self._last_activity = time.monotonic()

    def _wait_for_frame(self) -> bool:
        """Until a frame begins: False on idle timeout (never while this connection's train runs)."""
        while not self._closed.is_set():
            if self.reader.buffered:
                return True
            readable, _, _ = select.select([self.sock], [], [], 1.0)
            if readable:
                return True
            task = self.server.running_task()
            if task is not None and task.owner is self:
                self._last_activity = time.monotonic()
            elif time.monotonic() - self._last_activity > self.server.config.idle_timeout_s:
                return False
        return False

    # --- sending ------------------------------------------------------------------------------------
    def send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        with self._send_lock:
            send_frame(self.sock, self.session, header, payload)

    def send_file(self, header: Mapping[str, Any], source: BinaryIO, size: int) -> None:
        with self._send_lock:
            send_file_frame(self.sock, self.session, header, source, size)

    def send_error(self, rid: int | None, code: str, message: str, **details: Any) -> None:
        """An error answer; `details` are extra fields (too_large gives the file's name and size)."""
        self.send({"type": "error", "id": rid, "code": code, "message": message[:2000], **details})

    def _try_send_error(self, rid: int | None, code: str, message: str) -> None:
        with contextlib.suppress(OSError, ProtocolError):
            self.send_error(rid, code, message)

    # --- requests (each returns False to end the connection) ----------------------------------------
    def _on_hello(self, request: dict[str, Any], head: FrameHead) -> bool:
        raise ProtocolError("hello comes once, first")

    def _on_put(self, request: dict[str, Any], head: FrameHead) -> bool:
        rid = request["id"]
        try:
            target = place(self.server.config.work_dir, request["path"])
            if target.is_dir():
                raise BadPath(f"{request['path']} is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            place(self.server.config.work_dir, request["path"])  # the made dirs did not lead outside
        except (BadPath, OSError) as exc:
            self.reader.read_payload(head, None)  # keep the stream in step, then say why
            self.send_error(rid, "invalid", str(exc))
            return True
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    sink.write(chunk)

                self.reader.read_payload(head, write)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.send(
            {
                "type": "ok",
                "id": rid,
                "path": request["path"],
                "size": head.payload_len,
                "sha256": digest.hexdigest(),
            }
        )
        return True

    def _on_get(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        rid = request["id"]
        limit = min(request["max_bytes"], self.server.config.max_file_bytes)
        try:
            path = place(self.server.config.work_dir, request["path"])
            source = path.open("rb")
        except BadPath as exc:
            self.send_error(rid, "invalid", str(exc))
            return True
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.send_error(rid, "not_found", f"no file {request['path']}")
            return True
        with source:
            size = os.fstat(source.fileno()).st_size
            if size > limit:
                self.send_error(
                    rid,
                    "too_large",
                    f"{request['path']} is {size} bytes, over {limit}",
                    name=request["path"],
                    size=size,
                )
                return True
            self.send_file({"type": "file", "id": rid, "path": request["path"], "size": size}, source, size)
        return True

    def _placed(self, rid: int, relative: str) -> Path | None:
        """`relative` inside the work dir; None after answering 'invalid' when it may not be used."""
        try:
            return place(self.server.config.work_dir, relative)
        except BadPath as exc:
            self.send_error(rid, "invalid", str(exc))
            return None

    def _on_remove(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        rid = request["id"]
        path = self._placed(rid, request["path"])
        if path is None:
            return True
        task = self.server.running_task()
        if (
            task is not None
            and task.round_dir is not None
            and (task.round_dir == path or path in task.round_dir.parents)
        ):
            self.send_error(rid, "busy", f"a {task.kind} is running in {request['path']}")
            return True
        removed = True
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            removed = False
        except OSError as exc:
            self.send_error(rid, "failed", f"cannot remove {request['path']}: {exc.strerror}")
            return True
        self.send({"type": "ok", "id": rid, "path": request["path"], "removed": removed})
        return True

    def _on_hashes(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        rid = request["id"]
        digests: dict[str, str | None] = {}
        for relative in request["paths"]:
            path = self._placed(rid, relative)
            if path is None:
                return True
            digests[relative] = self.server.file_hashes(path)
        self.send({"type": "ok", "id": rid, "sha256": digests})
        return True

    def _on_train(self, request: dict[str, Any], head: FrameHead) -> bool:
        return self._start(request, head, self._train)

    def _on_request(self, request: dict[str, Any], head: FrameHead) -> bool:
        return self._start(request, head, self._index_request)

    def _start(self, request: dict[str, Any], head: FrameHead, work: Callable[[_Task], None]) -> bool:
        self.reader.read_payload(head, None)
        rid = request["id"]
        round_dir = self._placed(rid, request["round_dir"])
        if round_dir is None:
            return True
        task = _Task(id=rid, kind=request["type"], owner=self, round_dir=round_dir)
        if not self.server.start_task(task, work):
            running = self.server.running_task()
            self.send_error(rid, "busy", f"a {running.kind if running else 'task'} is running")
        return True

    def _train(self, task: _Task) -> None:
        round_dir = task.round_dir
        assert round_dir is not None
        self._run_task(
            task,
            lambda stdout: run_train(
                round_dir,
                stdout=stdout,
                environ=self.server.environ,
                default_work_dir=self.server.config.work_dir,
                cancel=task.cancel,
                shard_loader=self.server.shards,
            ),
        )

    def _index_request(self, task: _Task) -> None:
        round_dir = task.round_dir
        assert round_dir is not None
        self._run_task(
            task,
            lambda stdout: run_request(
                round_dir,
                stdout=stdout,
                default_work_dir=self.server.config.work_dir,
                shard_loader=self.server.shards,
            ),
        )

    def _run_task(self, task: _Task, work: Callable[[TextIO], None]) -> None:
        """Run train/request with its progress lines relayed as event frames. The last frame (done, or
        the error its failure becomes) is sent only after the task slot is free: a client that starts
        the next round the moment it reads it must not find the agent busy."""
        final: list[dict[str, Any]] = []

        def relay(line: dict[str, Any]) -> None:
            if line.get("event") == "done":
                final.append({"type": "done", "id": task.id, "event": line})
            else:
                self.send({"type": "event", "id": task.id, "event": line})

        try:
            work(cast(TextIO, _LineEvents(relay)))
        except TrainingCancelled as exc:
            final[:] = [self._error_frame(task.id, "cancelled", str(exc))]
        except AgentError as exc:
            final[:] = [self._error_frame(task.id, "failed", " ".join(str(exc).split()))]
        except (OSError, ProtocolError) as exc:  # the connection broke while we reported
            task.cancel.set()
            self.server.log("task_aborted", reason=f"{type(exc).__name__}: {exc}"[:300])
            return
        except Exception as exc:  # noqa: BLE001 - anything else is reported, never a dead thread
            message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            final[:] = [self._error_frame(task.id, "failed", message)]
        finally:
            self.server.finish_task(task)
        if not final:  # pragma: no cover - run_train and run_request always end with done or raise
            final.append(self._error_frame(task.id, "failed", "the task ended without a result"))
        with contextlib.suppress(OSError, ProtocolError):
            self.send(final[-1])

    @staticmethod
    def _error_frame(rid: int, code: str, message: str) -> dict[str, Any]:
        return {"type": "error", "id": rid, "code": code, "message": message[:2000]}

    def _on_result(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        rid = request["id"]
        round_dir = self._placed(rid, request["round_dir"])
        if round_dir is None:
            return True
        task = self.server.running_task()
        if task is not None and task.round_dir == round_dir:
            self.send_error(rid, "busy", f"{request['round_dir']} is still running")
            return True
        try:
            result = _read_limited(round_dir / RESULT_FILE, MAX_RESULT_JSON_BYTES)
            update = _read_limited(
                round_dir / UPDATE_FILE, min(request["max_bytes"], self.server.config.max_file_bytes)
            )
        except FileNotFoundError as exc:
            name = Path(str(exc.filename)).name
            self.send_error(rid, "not_found", f"no {name} in {request['round_dir']}", name=name)
            return True
        except _TooLarge as exc:
            self.send_error(rid, "too_large", str(exc), name=exc.name, size=exc.size)
            return True
        self.send(
            {"type": "result", "id": rid, "update_size": len(update), "result_size": len(result)},
            update + result,
        )
        return True

    def _on_cancel(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        cancelled = self.server.cancel_task()
        self.send({"type": "ok", "id": request["id"], "cancelled": cancelled})
        return True

    def _on_upgrade(self, request: dict[str, Any], head: FrameHead) -> bool:
        rid = request["id"]
        archive = self.server.archive
        if archive is None:
            self.reader.read_payload(head, None)
            self.send_error(rid, "unsupported", "this agent does not run from an agent.pyz")
            return True
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=".agent.", suffix=".pyz.part")
        try:
            with os.fdopen(fd, "wb") as sink:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    sink.write(chunk)

                self.reader.read_payload(head, write)
            problem = self._upgrade_problem(Path(tmp), digest.hexdigest(), request["sha256"])
            if problem is not None:
                self.send_error(rid, problem[0], problem[1])
                return True
            os.chmod(tmp, 0o755)  # noqa: S103 - a program, as build.py makes it
            os.replace(tmp, archive)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.server.log("upgraded", sha256=digest.hexdigest())
        self.server.prepare_restart()  # before answering: see there
        try:
            self.send({"type": "ok", "id": rid, "sha256": digest.hexdigest(), "restarting": True})
        finally:
            self.server.request_restart()
        return False

    def _upgrade_problem(self, candidate: Path, actual: str, announced: str) -> tuple[str, str] | None:
        if actual != announced:
            return "invalid", f"agent.pyz has sha256 {actual}, not the announced {announced[:64]}"
        if not is_agent_archive(candidate):
            return "invalid", "not an agent.pyz (no zip with a __main__.py)"
        if self.server.busy:
            return "busy", "a task is running; upgrade after it"
        return None

    def _on_bye(self, request: dict[str, Any], head: FrameHead) -> bool:
        self.reader.read_payload(head, None)
        self.send({"type": "bye", "id": request["id"]})
        return False


class _TooLarge(Exception):
    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"{name} is {size} bytes, over the {limit}-byte limit")
        self.name = name
        self.size = size


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        if size > limit:
            raise _TooLarge(path.name, size, limit)
        return source.read(limit + 1)[:limit]


# --- command line -----------------------------------------------------------------------------------
SERVE_USAGE = "usage: agent.pyz serve --port P [--secret-file F] [--work-dir D] (or the secret in $FEDFLEET_AGENT_SECRET)"
_OPTIONS = ("--port", "--secret-file", "--work-dir")


class UsageError(ValueError):
    pass


def parse_serve_args(args: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if name not in _OPTIONS or name in options:
            raise UsageError(f"unexpected {word[:40]!r}; {SERVE_USAGE}")
        if not eq:
            if not words:
                raise UsageError(f"{name} needs a value; {SERVE_USAGE}")
            value = words.pop(0)
        options[name] = value
    if "--port" not in options:
        raise UsageError(SERVE_USAGE)
    return options


def read_secret(options: Mapping[str, str], environ: Mapping[str, str]) -> str:
    if "--secret-file" in options:
        try:
            with open(options["--secret-file"], "rb") as handle:
                return handle.read(1024).decode("ascii", errors="replace").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the secret file: {exc.strerror}") from None
    secret = environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise UsageError(f"no secret: pass --secret-file or set {SECRET_ENV}")
    return secret


def reexec(archive: Path, argv: tuple[str, ...]) -> None:
    """Become the (new) agent.pyz with the same arguments; the pid stays."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, str(archive), *argv])  # noqa: S606 - fixed argv


def serve_main(
    args: list[str], *, stdout: TextIO, environ: Mapping[str, str], archive: Path | None, work_dir: Path
) -> int:
    """`agent.pyz serve ...`: 2 for a bad command line, 1 when it cannot listen, 0 after a clean stop
    (SIGTERM/SIGINT). An upgrade does not return: the process re-executes itself."""
    try:
        options = parse_serve_args(args)
        port = _port(options["--port"])
        secret = secret_bytes(read_secret(options, environ))
    except (UsageError, ValueError) as exc:
        emit(stdout, "error", message=str(exc))
        return 2
    loopback = environ.get(LOOPBACK_DIR_ENV, "").strip()
    config = ServeConfig(
        port=port,
        secret=secret,
        work_dir=Path(options.get("--work-dir") or work_dir),
        argv=("serve", *args),
        loopback_dir=Path(loopback) if loopback else None,
    )
    if not config.work_dir.is_dir():
        emit(stdout, "error", message=f"work dir {config.work_dir} does not exist")
        return 2
    restart = (lambda: reexec(archive, config.argv)) if archive is not None else None
    server = AgentServer(config, environ=environ, log=stdout, archive=archive, restart=restart)
    try:
        server.bind()
    except ServeError as exc:
        emit(stdout, "error", message=str(exc))
        return 1
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: server.stop())
    server.serve_forever()
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--port must be 1-65535, got {text[:20]!r}")
    return int(text)
