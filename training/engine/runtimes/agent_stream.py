"""Runtimes over a resident agent: `agent.pyz serve` on the phone's loopback, reached through ADB's
`tcp:<port>` stream (devices/adb.py open_stream) and spoken to with training.agent.protocol's AgentClient.

One session class serves both runtimes (resident.py, app.py); they differ only in who starts the agent.
A round on one phone is one ADB connection and one stream: hello (is the agent there, does it know our
secret, is it the platform's build — else it is upgraded over the stream and reconnected), then

    prepare   hashes of what the phone holds, last rounds' dirs removed, shard/union put when they differ
    deliver   put per file into this round's dir
    run       train / request, progress relayed as the agent's own JSON lines
    collect   get per file, bounded by the caller's limit, written atomically

Paths are relative to the agent's work dir (where exec mode keeps the same files), so the platform's
storage.phone_* helpers with an empty work dir name them. The agent's answers map onto the seam's errors:
a refused stream is "agent not running", a refused hello "wrong agent secret", a stream that broke while
ADB still answers is the agent dying (the phone stays online), one that broke with ADB is the phone going
offline; a timeout is a timeout, and anything off-protocol is an "agent protocol" error.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devices import adb
from devices import services as device_services
from devices.models import Device, DeviceStatus
from training.agent import protocol
from training.agent.round_config import RESULT_FILE, UPDATE_FILE
from training.engine.runtimes.base import (
    AgentRun,
    ClientError,
    ClientOffline,
    ClientTimeout,
    ClientUnauthorized,
    JobFiles,
    OutputMissing,
    OutputTooLarge,
    Prepared,
    ProgressCallback,
    RoundRef,
    Step,
)
from training.engine.runtimes.exec_shell import CONNECT_TIMEOUT_S, agent_build, client_errors, target_of
from training.jobs import storage

log = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 30.0  # one frame's worth of waiting (a train's own deadline bounds the whole run)
AGENT_WAIT_S = 120.0  # an agent that (re)starts imports torch: seconds on a phone
REFUSAL_GRACE_S = 5.0  # how long a replaced agent with another secret may still answer
# What this side will read in one frame: an update is at most twice the model plus slack, checked again
# against the round's own limit in collect(); nothing a phone sends is held beyond this.
MAX_INCOMING_BYTES = 256 * 1024 * 1024

NOT_RUNNING = "agent not running"
WRONG_SECRET = "wrong agent secret"  # noqa: S105 - a reason, not a secret
UPGRADING = "agent outdated, upgrading"


class AgentRefusedSecret(ClientUnauthorized):
    """The phone's agent closed the connection at hello: it does not know this phone's secret."""

    prefix = "agent refused the platform"


class AgentDied(ClientError):
    """The agent's stream broke while ADB still answers: the agent (not the phone) went away."""

    prefix = "agent connection lost"


def relative_round_dir(ref: RoundRef) -> str:
    return storage.phone_round_dir("", ref.job_id, ref.round_number, ref.attempt)


def note_agent_state(device: Device, reason: str) -> None:
    """Say on the fleet page why the phone's agent is not ready (its status stays what it is)."""
    current = Device.objects.filter(pk=device.pk).values_list("status", flat=True).first()
    if current in (DeviceStatus.ONLINE, DeviceStatus.BUSY):
        device_services.set_status(device.pk, current, reason=reason)


@contextmanager
def agent_errors(conn: adb.AdbConnection) -> Iterator[None]:
    """The agent client's errors in the seam's words."""
    try:
        yield
    except protocol.AgentRefused as exc:
        raise AgentRefusedSecret(WRONG_SECRET) from exc
    except protocol.AgentTimeout as exc:
        raise ClientTimeout(str(exc)) from exc
    except protocol.AgentConnectionLost as exc:
        if conn.closed:  # the ADB connection went with it: the phone is gone, not just its agent
            raise ClientOffline(str(exc)) from exc
        raise AgentDied(str(exc)) from exc
    except protocol.AgentProtocolViolation as exc:
        error = ClientError(str(exc))
        error.prefix = "agent protocol"
        raise error from exc
    except protocol.AgentRequestFailed as exc:
        error = ClientError(f"{exc.code}: {exc.message}"[:300])
        error.prefix = "agent error"
        raise error from exc
    except protocol.AgentClientError as exc:
        error = ClientError(str(exc))
        error.prefix = "agent error"
        raise error from exc


def open_agent(conn: adb.AdbConnection, device: Device) -> protocol.AgentClient:
    """A stream to the phone's agent with hello done. adb.StreamRefused when nothing listens; the
    agent's own errors as agent_errors() maps them."""
    stream = conn.open_stream(f"tcp:{int(device.agent_port)}", timeout_s=STREAM_TIMEOUT_S)
    client = protocol.AgentClient(
        stream, device.agent_secret, timeout_s=STREAM_TIMEOUT_S, max_payload_bytes=MAX_INCOMING_BYTES
    )
    try:
        with agent_errors(conn):
            client.hello()
    except BaseException:
        client.close()
        raise
    return client


def wait_for_agent(
    conn: adb.AdbConnection,
    device: Device,
    *,
    wait_s: float,
    why: Callable[[], str] | None = None,
    restarting: bool = False,
) -> protocol.AgentClient:
    """open_agent(), retried while the phone refuses the stream (an agent starting or re-executing).
    `restarting`: an agent with another secret was just replaced, and may answer for a moment more."""
    deadline = time.monotonic() + wait_s
    # A predecessor answers for moments at most; one refusing for longer holds the port for good.
    refusals_until = time.monotonic() + REFUSAL_GRACE_S
    pause = 0.02
    while True:
        try:
            return open_agent(conn, device)
        except (adb.StreamRefused, AgentRefusedSecret) as exc:
            if isinstance(exc, AgentRefusedSecret) and (not restarting or time.monotonic() > refusals_until):
                raise
            if time.monotonic() + pause > deadline:
                if isinstance(exc, AgentRefusedSecret):
                    raise
                detail = f": {why()}" if why is not None else ""
                raise ClientOffline(
                    f"{NOT_RUNNING} (it did not listen within {wait_s:g} s){detail}"
                ) from None
            time.sleep(pause)  # polling the phone's port; nothing else tells us when it listens
            pause = min(pause * 2, 0.5)


def up_to_date(conn: adb.AdbConnection, device: Device, client: protocol.AgentClient) -> protocol.AgentClient:
    """The agent as the platform built it: an outdated one is sent the current agent.pyz over the
    stream, re-executes itself and is reached again (the fleet page says so meanwhile)."""
    build = agent_build()
    running = client.hello_info.sha256 if client.hello_info is not None else None
    if running is None or running == build.sha256:
        return client  # None: an agent run from a source tree (development), which cannot be replaced
    log.info("%s: agent %s is outdated (%s); upgrading", device, running[:12], build.sha256[:12])
    note_agent_state(device, f"{UPGRADING} ({running[:12]} -> {build.sha256[:12]})")
    with agent_errors(conn):
        client.upgrade(build.path.read_bytes())
    client.close()
    upgraded = wait_for_agent(conn, device, wait_s=AGENT_WAIT_S)
    now = upgraded.hello_info.sha256 if upgraded.hello_info is not None else None
    if now != build.sha256:
        upgraded.close()
        raise ClientError(f"the agent upgrade did not take: it runs {str(now)[:12]}, not {build.sha256[:12]}")
    note_agent_state(device, f"agent upgraded to {build.sha256[:12]}")
    return upgraded


class AgentStreamSession:
    """One phone's round over one agent stream (the ClientSession of the resident and app runtimes)."""

    def __init__(
        self, conn: adb.AdbConnection, client: protocol.AgentClient, device: Device, ref: RoundRef
    ) -> None:
        self.conn, self.client, self.device = conn, client, device
        self.round_dir = relative_round_dir(ref)
        self.shard = storage.relative_shard_path(ref.job_id)
        self.union = storage.relative_union_path(ref.job_id)
        self.rounds = posixpath.dirname(self.round_dir)

    def prepare(self, job_files: JobFiles, *, send_union: bool) -> Prepared:
        with agent_errors(self.conn):
            wanted = [
                *([self.shard] if job_files.shard is not None else []),  # None: the phone's own files
                *([self.union] if job_files.union is not None else []),
            ]
            # Earlier rounds' dirs of this job go first (the phone is leased to one job, one round at a
            # time); one round trip for both questions.
            _, current = self.client.remove_and_hash(self.rounds, wanted)
            pushed = union = 0
            if job_files.shard is not None and current.get(self.shard) != job_files.shard_sha256:
                pushed += int(self.client.put_file(self.shard, job_files.shard)["size"])
            if send_union and job_files.union is not None and job_files.union_sha256 is not None:
                if current.get(self.union) != job_files.union_sha256:
                    union = int(self.client.put_file(self.union, job_files.union)["size"])
        return Prepared(job_bytes=pushed, union_bytes=union)

    def deliver(self, local_dir: Path, names: Sequence[str]) -> int:
        with agent_errors(self.conn):
            answers = self.client.put_files(
                [(f"{self.round_dir}/{name}", local_dir / name) for name in names]
            )
        return sum(int(answer["size"]) for answer in answers)

    def run(self, step: Step, on_progress: ProgressCallback | None, *, timeout_s: float) -> AgentRun:
        def relay(event: dict[str, Any]) -> None:
            if on_progress is not None and event.get("event") == "progress":
                on_progress(event)

        with agent_errors(self.conn):
            try:
                if step == "train":
                    done = self.client.train(self.round_dir, on_event=relay, timeout_s=timeout_s)
                else:
                    done = self.client.request(self.round_dir, timeout_s=timeout_s)
            except protocol.AgentRequestFailed as exc:  # cancelled, busy, the round's own error
                return AgentRun(exit_code=1, error=f"{exc.code}: {exc.message}"[:300])
        return AgentRun(exit_code=0, done=done)

    def collect(self, files: Sequence[tuple[str, Path]], *, max_bytes: int) -> int:
        names = [name for name, _ in files]
        if names == [UPDATE_FILE, RESULT_FILE]:  # a train's outputs: both in one answer
            return self._collect_result(files, max_bytes=max_bytes)
        total = 0
        for name, local in files:
            with agent_errors(self.conn):
                try:
                    data = self.client.get(f"{self.round_dir}/{name}", max_bytes=max_bytes)
                except protocol.AgentRequestFailed as exc:
                    if exc.code == "not_found":
                        raise OutputMissing(name) from exc
                    if exc.code == "too_large":
                        size = exc.details.get("size")
                        raise OutputTooLarge(name, size if isinstance(size, int) else max_bytes + 1) from exc
                    raise
            if len(data) > max_bytes:  # an agent that ignored the limit it was given
                raise OutputTooLarge(name, len(data), at_least=True)
            write_atomically(local, data)
            total += len(data)
        return total

    def _collect_result(self, files: Sequence[tuple[str, Path]], *, max_bytes: int) -> int:
        """The `result` request: update and result.json in one frame, both sizes checked by the agent
        before it sends (its not_found / too_large name the file) and again here."""
        with agent_errors(self.conn):
            try:
                result = self.client.result(self.round_dir, max_bytes=max_bytes)
            except protocol.AgentRequestFailed as exc:
                name = str(exc.details.get("name", UPDATE_FILE))[:100]
                if exc.code == "not_found":
                    raise OutputMissing(name) from exc
                if exc.code == "too_large":
                    size = exc.details.get("size")
                    raise OutputTooLarge(name, size if isinstance(size, int) else max_bytes + 1) from exc
                raise
        for (name, _), data in zip(files, (result.update, result.result_json), strict=True):
            if len(data) > max_bytes:  # an agent that ignored the limit it was given
                raise OutputTooLarge(name, len(data), at_least=True)
        for (_, local), data in zip(files, (result.update, result.result_json), strict=True):
            write_atomically(local, data)
        return len(result.update) + len(result.result_json)


def write_atomically(local: Path, data: bytes) -> None:
    """Under a temporary name, renamed when complete: a failure leaves no file (nor a partial one)."""
    partial = local.with_name(f".{local.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)


class AgentStreamRuntime:
    """What the resident and app runtimes share; `reach` says how the agent is found (or started)."""

    name = "agent-stream"

    def reach(self, conn: adb.AdbConnection, device: Device) -> protocol.AgentClient:
        raise NotImplementedError

    @contextmanager
    def session(self, device: Device, ref: RoundRef) -> Iterator[AgentStreamSession]:
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            client = self.reach(conn, device)
            try:
                yield AgentStreamSession(conn, client, device, ref)
            finally:
                client.close()

    def cancel(self, device: Device, ref: RoundRef) -> None:
        """A fresh connection asks the agent to stop its running train (within a step); an agent that is
        not there has nothing running."""
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            try:
                client = open_agent(conn, device)
            except adb.StreamRefused:
                return
            with client, agent_errors(conn):
                client.cancel()

    def clean_up(self, device: Device, job_id: int) -> None:
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            try:
                client = open_agent(conn, device)
            except adb.StreamRefused:
                # The work dir is one the shell reaches too (/data/local/tmp, or /sdcard for the app).
                job_dir = storage.phone_job_dir(device.work_dir, job_id)
                conn.run(f"rm -rf {adb.quote(job_dir)}", timeout_s=60)
                return
            with client, agent_errors(conn):
                client.remove(storage.relative_job_dir(job_id))


def refused_as_not_running(action: Callable[[], protocol.AgentClient]) -> protocol.AgentClient:
    try:
        return action()
    except adb.StreamRefused as exc:
        raise ClientOffline(NOT_RUNNING) from exc
