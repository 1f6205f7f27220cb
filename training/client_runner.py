"""One phone's part of a round, over ADB: push, train, pull, validate. Runs on the `devices` queue.

Everything that crosses from the phone is untrusted: progress lines are parsed as JSON with bounds, the
update is loaded with safetensors (never unpickled), checked for names, shapes, dtypes, finiteness and
size, and a bad one is *rejected* with a reason while the round goes on without it.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import shlex
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from devices import adb
from devices import services as device_services
from devices.models import Device, DeviceStatus
from devices.validators import agent_python_command
from training import storage
from training.agent.build import AgentBuild, build_agent_pyz
from training.events import send_job_event
from training.fl.wire import InvalidUpdate, load_tensors
from training.models import (
    FINISHED_JOB_STATUSES,
    IN_FLIGHT_STATES,
    ClientResult,
    ClientState,
    Job,
    Participant,
    RoundStatus,
)

log = logging.getLogger(__name__)

EXIT_MARKER = "FEDFLEET_EXIT="
PROGRESS_DB_INTERVAL_S = 1.0
PROGRESS_EVENT_INTERVAL_S = 0.25
# Room for safetensors' JSON header and result.json on top of the raw tensor bytes.
UPLOAD_SLACK_BYTES = 256 * 1024


_agent_build_lock = threading.Lock()


def agent_build() -> AgentBuild:
    """This process's agent.pyz, built on first use. The lock matters: a round's first tasks arrive
    together on the devices worker's threads, and each would otherwise compile and write its own copy."""
    with _agent_build_lock:
        return _built_agent()


@lru_cache(maxsize=1)
def _built_agent() -> AgentBuild:
    return build_agent_pyz(storage.data_dir() / "agent")


@dataclass
class AgentRun:
    """What the agent printed: the last progress, its own error message, and its exit status."""

    exit_code: int | None = None
    error: str = ""
    tail: list[str] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)


def _set_state(result: ClientResult, state: str, **fields: Any) -> bool:
    """Move an in-flight result to `state`; False if it is no longer in flight (round closed under us)."""
    updated = ClientResult.objects.filter(pk=result.pk, state__in=IN_FLIGHT_STATES).update(
        state=state, **fields
    )
    if updated:
        result.state = state
        for key, value in fields.items():
            setattr(result, key, value)
    return bool(updated)


def _finish(result: ClientResult, state: str, reason: str = "", **fields: Any) -> None:
    with transaction.atomic():
        if not _set_state(result, state, reason=reason[:300], **fields):
            return
        result.refresh_from_db()
        event = "device.finished" if state == ClientState.REPORTED else "device.failed"
        send_job_event(result.job_id, event, client=result.snapshot())


class ProgressRelay:
    """Turns the agent's JSON progress lines into throttled DB writes and websocket events."""

    def __init__(self, result: ClientResult) -> None:
        self.result = result
        self.last_db = 0.0
        self.last_event = 0.0

    def __call__(self, line: dict[str, Any]) -> None:
        epoch = _number(line.get("epoch"))
        step = _number(line.get("step"))
        steps = _number(line.get("steps"))
        loss = _number(line.get("loss"))
        now = time.monotonic()
        if now - self.last_db >= PROGRESS_DB_INTERVAL_S:
            self.last_db = now
            ClientResult.objects.filter(pk=self.result.pk).update(
                epoch=epoch,
                step=int(step) if step is not None else None,
                steps_total=int(steps) if steps is not None else None,
                loss=loss,
            )
        if now - self.last_event >= PROGRESS_EVENT_INTERVAL_S:
            self.last_event = now
            send_job_event(
                self.result.job_id,
                "device.progress",
                round=self.result.round.number,
                device=self.result.device_id,
                epoch=epoch,
                step=step,
                steps_total=steps,
                loss=loss,
            )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of an untrusted JSON object (bools are not numbers here)."""
    return {str(k)[:64]: float(v) for k, v in values.items() if _number(v) is not None}


def parse_agent_output(lines: Any, on_progress: ProgressRelay | None) -> AgentRun:
    run = AgentRun()
    for raw in lines:
        line = raw.strip()
        if line.startswith(EXIT_MARKER):
            try:
                run.exit_code = int(line[len(EXIT_MARKER) :])
            except ValueError:
                run.exit_code = -1
            continue
        message: Any = None
        if line.startswith("{") and len(line) < 64 * 1024:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = None
        if isinstance(message, dict):
            kind = message.get("event")
            if kind == "progress" and on_progress is not None:
                on_progress(message)
            elif kind == "done":
                run.done = message
            elif kind == "error":
                run.error = str(message.get("message", ""))[:300]
            continue
        run.tail = (run.tail + [line[:300]])[-5:]
    return run


def remote_sha256(
    conn: adb.AdbConnection, paths: list[str], *, make_dirs: list[str], remove_first: str | None = None
) -> dict[str, str]:
    """Remove `remove_first` (last round's dir tree), create `make_dirs` and hash `paths` on the phone in
    one command: one round trip where there were four (a round's cleanup used to be its own command at
    the end of the round, on the way to reporting).

    Missing files simply have no line; the output is untrusted text, so only well-formed
    `<64 hex>  <one of our paths>` lines count."""
    quoted_dirs = " ".join(shlex.quote(d) for d in make_dirs)
    quoted_paths = " ".join(shlex.quote(p) for p in paths)
    remove = f"rm -rf {shlex.quote(remove_first)}; " if remove_first else ""
    output = conn.shell(
        f"{remove}mkdir -p {quoted_dirs} && sha256sum {quoted_paths} 2>/dev/null", timeout_s=30
    )
    hashes = {}
    for line in output.splitlines():
        digest, _, path = line.strip().partition("  ")
        if path in paths and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            hashes[path] = digest
    return hashes


def _names_union(config_path: Path) -> bool:
    """Does this round's request config (our own file) name a union file for the phone to read?"""
    return "union" in json.loads(config_path.read_text())


def union_sha256(path: Path) -> str:
    """storage.file_sha256 of a job's union file, hashed once per version of the file (it is written
    once; every phone of every round of the job compares its copy against it)."""
    info = path.stat()
    return _union_sha256(str(path), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=64)
def _union_sha256(path: str, mtime_ns: int, size: int) -> str:
    return storage.file_sha256(Path(path))


def push_if_changed(
    conn: adb.AdbConnection, local: Path, remote: str, sha256: str, current: dict[str, str]
) -> int:
    """Push `local` unless the phone already holds exactly this content; return the bytes pushed."""
    return 0 if current.get(remote) == sha256 else conn.push(local, remote)


def expected_upload_bytes(local_dir: Path) -> int:
    """An upload may not be larger than what was sent plus slack (the model is the same size both ways)."""
    return 2 * (local_dir / "global.safetensors").stat().st_size + UPLOAD_SLACK_BYTES


def _mark_offline(result: ClientResult, why: str) -> None:
    """A phone nothing answers on is offline until a health probe reaches it again. Without this, releasing
    its lease would call it online and the next round would pick it at once (the probe never sees a phone
    that is leased most of the time), so a phone that left would fail round after round."""
    device_services.set_status(
        result.device_id, DeviceStatus.OFFLINE, reason=f"unreachable during job {result.job_id}: {why}"
    )


def run_client(result_id: int) -> None:
    result = ClientResult.objects.select_related("round", "job", "device").get(pk=result_id)
    if result.state not in IN_FLIGHT_STATES:
        return  # done already (a redelivered task)
    if result.round.status != RoundStatus.TRAINING:
        _finish(result, ClientState.LATE, "the round closed before this phone started")
        return
    try:
        _run(result)
    except adb.DeviceUnauthorized as exc:
        _finish(result, ClientState.FAILED, f"phone rejected the platform key: {exc}")
    except adb.DeviceTimeout as exc:
        _finish(result, ClientState.FAILED, f"phone stopped answering: {exc}")
    except adb.DeviceOffline as exc:
        _finish(result, ClientState.FAILED, f"phone went offline: {exc}")
        _mark_offline(result, str(exc))
    except adb.TransferFailed as exc:
        _finish(result, ClientState.FAILED, f"transfer failed: {exc}")
    except adb.AdbError as exc:
        _finish(result, ClientState.FAILED, f"adb error: {exc}")
    finally:
        from training import tasks  # noqa: PLC0415 - tasks import this module

        tasks.maybe_close_round(result.round_id)
        # A job that finished while this phone worked (cancelled, failed) was cleaned off the phone at
        # that moment, and this run may have written its files again since: clean once more, last.
        if Job.objects.filter(pk=result.job_id, status__in=FINISHED_JOB_STATUSES).exists():
            clean_phone(result.job_id, result.device_id)


def _run(result: ClientResult) -> None:
    rnd, job, device = result.round, result.job, result.device
    participant = Participant.objects.get(job=job, device=device)
    local_dir = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, device.pk)
    work_dir = device.work_dir
    remote_round = storage.phone_round_dir(work_dir, job.pk, rnd.number, rnd.attempt)
    remote_agent = storage.phone_agent_path(work_dir)
    remaining = max(1.0, (rnd.deadline_at - timezone.now()).total_seconds())
    target = adb.Target(transport=device.transport, address=device.address)

    with adb.connect(target, timeout_s=10) as conn:
        t0 = time.monotonic()
        _set_state(result, ClientState.PUSHING)
        remote_shard = storage.phone_shard_path(work_dir, job.pk)
        submodel = needs_request(job)
        remote_union = storage.phone_union_path(work_dir, job.pk)
        current = remote_sha256(
            conn,
            [remote_agent, remote_shard, *([remote_union] if submodel else [])],
            make_dirs=[remote_round, storage.phone_state_dir(work_dir, job.pk)],
            # Earlier rounds' dirs of this job (the phone is leased to one job, one round at a time).
            remove_first=storage.phone_rounds_dir(work_dir, job.pk),
        )
        build = agent_build()
        pushed = push_if_changed(conn, build.path, remote_agent, build.sha256, current)
        local_shard = storage.shard_path(job.pk, participant.client_index)
        pushed += push_if_changed(conn, local_shard, remote_shard, participant.shard_sha256, current)
        request: RequestStep | None = None
        if submodel:  # the phone's index request decides what it downloads
            union_down = 0
            if _names_union(local_dir / "config.json"):  # the preset draws decoys from U
                local_union = storage.union_path(job.pk)
                union_down = push_if_changed(
                    conn, local_union, remote_union, union_sha256(local_union), current
                )
            request = _request_step(
                conn, result, participant, local_dir, remote_round, remote_agent, remaining, union_down
            )
            if request is None:
                return
        # This round's model traffic (the union when it was sent, and the request step's config
        # included), apart from agent and shard.
        payload_down = request.bytes_down if request is not None else 0
        payload_down += conn.push_files(
            [(local_dir / name, f"{remote_round}/{name}") for name in ("global.safetensors", "config.json")]
        )
        pushed += payload_down
        push_s = time.monotonic() - t0

        t1 = time.monotonic()
        if not _set_state(result, ClientState.TRAINING, push_s=push_s, bytes_down=pushed):
            return
        send_job_event(job.pk, "device.progress", round=rnd.number, device=device.pk, state="training")
        command = (
            f"{agent_python_command(device.agent_python)} {shlex.quote(remote_agent)} train "
            f"{shlex.quote(remote_round)}; echo {EXIT_MARKER}$?"
        )
        run = parse_agent_output(conn.stream_lines(command, timeout_s=remaining), ProgressRelay(result))
        train_s = time.monotonic() - t1
        if run.exit_code != 0:
            why = run.error or (run.tail[-1] if run.tail else "no output")
            _finish(result, ClientState.FAILED, f"agent exited with {run.exit_code}: {why}", train_s=train_s)
            return

        t2 = time.monotonic()
        if not _set_state(result, ClientState.PULLING, train_s=train_s):
            return
        limit = expected_upload_bytes(local_dir)
        outputs = ("update.safetensors", "result.json")
        try:  # one sync stream: both sizes are checked before either file is fetched
            conn.pull_files(
                [(f"{remote_round}/{name}", local_dir / name) for name in outputs], max_bytes=limit
            )
        except adb.RemoteFileMissing as exc:
            _finish(result, ClientState.FAILED, f"the agent wrote no {posixpath.basename(exc.remote)}")
            return
        except adb.RemoteFileTooLarge as exc:
            name = posixpath.basename(exc.remote)
            _finish(result, ClientState.REJECTED, f"{name} is {exc.size} bytes, over the {limit}-byte limit")
            return
        pull_s = time.monotonic() - t2

    _accept(result, local_dir, limit, pull_s, request, payload_down)


# --------------------------------------------------------------- submodel jobs: the request step


@dataclass(frozen=True)
class RequestStep:
    """What the request step moved: the union payload down, the request up (both count as traffic)."""

    bytes_down: int
    bytes_up: int
    rows: int

    def metrics(self) -> dict[str, float]:
        return {
            "request_bytes_down": float(self.bytes_down),
            "request_bytes_up": float(self.bytes_up),
            "request_rows": float(self.rows),
        }


def needs_request(job: Any) -> bool:
    from training.engine import job_needs_request  # noqa: PLC0415 - engine imports the model stack

    return job_needs_request(job)


def _request_step(
    conn: adb.AdbConnection,
    result: ClientResult,
    participant: Participant,
    local_dir: Path,
    remote_round: str,
    remote_agent: str,
    remaining: float,
    union_down: int,
) -> RequestStep | None:
    """Get this phone's index request (once per round attempt), check and record it, then write its
    submodel download (engine.configure_client). None: the phone failed or was rejected (recorded).

    A redelivered task finds the request recorded and does not ask the phone again: a second
    randomized answer for the same round would let the server average two draws of the per-round stage.
    """
    from training import engine, submodel_rounds  # noqa: PLC0415

    rnd, device = result.round, result.device
    down, up = union_down, 0
    recorded = submodel_rounds.recorded_request_path(local_dir)
    if not recorded.exists():
        down += conn.push(local_dir / "config.json", f"{remote_round}/config.json")  # names U on the phone
        send_job_event(
            result.job_id, "device.progress", round=rnd.number, device=device.pk, state="requesting"
        )
        command = (
            f"{agent_python_command(device.agent_python)} {shlex.quote(remote_agent)} request "
            f"{shlex.quote(remote_round)}; echo {EXIT_MARKER}$?"
        )
        run = parse_agent_output(conn.stream_lines(command, timeout_s=remaining), None)
        if run.exit_code != 0:
            why = run.error or (run.tail[-1] if run.tail else "no output")
            _finish(result, ClientState.FAILED, f"index request: agent exited with {run.exit_code}: {why}")
            return None
        limit = engine.max_request_bytes(rnd)
        pulled = local_dir / "request.pulled.safetensors"
        try:
            up = conn.pull_files(
                [(f"{remote_round}/{submodel_rounds.REQUEST_FILE}", pulled)], max_bytes=limit
            )
        except adb.RemoteFileMissing:
            _finish(result, ClientState.FAILED, "the agent wrote no index request")
            return None
        except adb.RemoteFileTooLarge as exc:
            _finish(
                result,
                ClientState.REJECTED,
                f"index request rejected: {exc.size} bytes, more than the whole union ({limit} bytes)",
            )
            return None
        try:
            tensors = load_tensors(pulled, max_bytes=limit)
        except InvalidUpdate as exc:
            _finish(result, ClientState.REJECTED, f"index request rejected: {exc}", bytes_up=up)
            return None
        errors = engine.request_errors(rnd, tensors)
        if errors:
            _finish(result, ClientState.REJECTED, "index request rejected: " + "; ".join(errors), bytes_up=up)
            return None
        submodel_rounds.record_request(local_dir, tensors)
    else:
        up = recorded.stat().st_size
    rows = sum(int(t.numel()) for t in load_tensors(recorded, max_bytes=recorded.stat().st_size).values())
    engine.configure_client(rnd, participant)
    return RequestStep(bytes_down=down, bytes_up=up, rows=rows)


def _accept(
    result: ClientResult,
    local_dir: Path,
    limit: int,
    pull_s: float,
    request: RequestStep | None = None,
    payload_down: int | None = None,
) -> None:
    from training.engine import upload_errors  # noqa: PLC0415 - engine imports the model stack

    up = sum((local_dir / n).stat().st_size for n in ("update.safetensors", "result.json"))
    up += request.bytes_up if request is not None else 0
    try:
        report = json.loads((local_dir / "result.json").read_text()[:65536])
        if not isinstance(report, dict):
            raise ValueError("result.json is not an object")
        samples = int(report.get("samples", 0))
        loss = _number(report.get("loss"))
        if samples <= 0:
            raise ValueError(f"result.json reports {samples} samples")
        tensors = load_tensors(local_dir / "update.safetensors", max_bytes=limit)
        errors = upload_errors(result.round, str(result.device_id), tensors, samples)
        if errors:
            raise InvalidUpdate("; ".join(errors))
    except (InvalidUpdate, ValueError, TypeError, OSError) as exc:
        _finish(result, ClientState.REJECTED, f"update rejected: {exc}", pull_s=pull_s, bytes_up=up)
        return
    metrics = _numbers(report)
    timings = report.get("timings")
    if isinstance(timings, dict):  # the agent's own phase timings (load, compute, write), kept for analysis
        metrics.update({f"agent_{k}": v for k, v in _numbers(timings).items()})
    if request is not None:  # the platform's own figures of the request step (not the phone's claims)
        metrics.update(request.metrics())
    if payload_down is not None:  # the round's model traffic alone (bytes_down also counts agent/shard)
        metrics.update({"payload_bytes_down": float(payload_down), "payload_bytes_up": float(up)})
    still_open = Q(round__status=RoundStatus.TRAINING)
    if not ClientResult.objects.filter(still_open, pk=result.pk).exists():
        _finish(result, ClientState.LATE, "reported after the round closed", pull_s=pull_s, bytes_up=up)
        return
    _finish(
        result,
        ClientState.REPORTED,
        pull_s=pull_s,
        bytes_up=up,
        num_samples=samples,
        loss=loss,
        metrics=metrics,
        reported_at=timezone.now(),
    )


# --------------------------------------------------------------- after a job: the phone's copy of it


def clean_phone(job_id: int, device_id: int) -> bool:
    """Remove a finished job's files from one phone: its shard, its state (SCAFFOLD's c_i, the index
    privacy memo), its union and its last round dir; the agent stays, other jobs share it. True when the
    phone answered. A phone that does not answer keeps the files (nothing else reads them) until an
    operator clears its work dir; the job log says so."""
    from training import services  # noqa: PLC0415 - services imports tasks, which import this module

    device = Device.objects.get(pk=device_id)
    job_dir = storage.phone_job_dir(device.work_dir, job_id)
    try:
        with adb.connect(
            adb.Target(transport=device.transport, address=device.address), timeout_s=10
        ) as conn:
            conn.run(f"rm -rf {shlex.quote(job_dir)}", timeout_s=60)
    except adb.AdbError as exc:
        services.log(job_id, f"could not remove the job's files from {device.name} ({job_dir}): {exc}")
        return False
    return True
