"""One phone's part of a round: push, train, pull, validate — driven through the client-runtime seam
(runtimes/), on the `devices` queue. This module owns the ClientResult's state machine; the runtime owns
how the phone is reached.

Everything that crosses from the phone is untrusted: progress lines are parsed as JSON with bounds, the
update is loaded with safetensors (never unpickled), checked for names, shapes, dtypes, finiteness and
size, and a bad one is *rejected* with a reason while the round goes on without it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.db import DatabaseError, transaction
from django.db import connection as db_connection
from django.db.models import Q
from django.utils import timezone

from devices import services as device_services
from devices.models import Device, DeviceStatus
from training.engine import phone_data, submodel_rounds, uploads
from training.engine.closing import maybe_close_round
from training.engine.jobdata import cached_model_spec, job_config
from training.engine.runtimes import runtime_for
from training.engine.runtimes.agent_output import phone_json
from training.engine.runtimes.base import (
    ClientError,
    ClientOffline,
    ClientSession,
    JobFiles,
    OutputMissing,
    OutputTooLarge,
    RoundRef,
)
from training.fl.wire import InvalidUpdate, load_tensors
from training.jobs import leases, services, storage
from training.jobs.events import send_job_event
from training.models import (
    FINISHED_JOB_STATUSES,
    IN_FLIGHT_STATES,
    ClientResult,
    ClientState,
    Job,
    Participant,
    Round,
    RoundStatus,
)

log = logging.getLogger(__name__)

PROGRESS_DB_INTERVAL_S = 1.0
PROGRESS_EVENT_INTERVAL_S = 0.25
# Room for safetensors' JSON header and result.json on top of the raw tensor bytes.
UPLOAD_SLACK_BYTES = 256 * 1024
UPDATE_FILES = ("update.safetensors", "result.json")
RESULT_MAX_CHARS = 64 * 1024
PAYLOAD_FILES = ("global.safetensors", "config.json")


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
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (phone_json bounds them; this is the backstop)
        return None
    return number if math.isfinite(number) else None


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of an untrusted JSON object (bools are not numbers here)."""
    return {str(k)[:64]: float(v) for k, v in values.items() if _number(v) is not None}


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


# --- exactly one run per phone per round: a claimed ClientResult with an owner token and a heartbeat ---------
HEARTBEAT_EVERY_S = 5.0


def claim_run(result_id: int) -> str | None:
    """Claim the result for this run; None when a live run owns it already (a redelivered or re-driven
    task leaves that run alone). A run whose owner stopped beating (its worker died) is taken over."""
    token = uuid.uuid4().hex
    now = timezone.now()
    stale = now - timedelta(seconds=leases.RUN_STALE_AFTER_S)
    claimed = (
        ClientResult.objects.filter(pk=result_id, state__in=IN_FLIGHT_STATES)
        .filter(Q(runner="") | Q(runner_seen_at__lt=stale) | Q(runner_seen_at__isnull=True))
        .update(runner=token, runner_seen_at=now)
    )
    return token if claimed else None


class Heartbeat(threading.Thread):
    """Beats for one claimed run until stopped; notices when another owner took the run over."""

    def __init__(self, result_id: int, token: str) -> None:
        super().__init__(name=f"heartbeat-{result_id}", daemon=True)
        self.result_id, self.token = result_id, token
        self.halt = threading.Event()
        self.lost = False

    def run(self) -> None:
        try:
            while not self.halt.wait(HEARTBEAT_EVERY_S):
                beat = ClientResult.objects.filter(pk=self.result_id, runner=self.token)
                if not beat.update(runner_seen_at=timezone.now()):
                    self.lost = True
                    return
        except DatabaseError:  # the next beat, or the staleness rule, settles it
            log.warning("heartbeat of result %s failed", self.result_id, exc_info=True)
        finally:
            db_connection.close()  # this thread's own connection


@contextmanager
def claimed_run(result_id: int) -> Iterator[str | None]:
    token = claim_run(result_id)
    if token is None:
        yield None
        return
    heartbeat = Heartbeat(result_id, token)
    heartbeat.start()
    try:
        yield token
    finally:
        heartbeat.halt.set()
        heartbeat.join(timeout=HEARTBEAT_EVERY_S)
        ClientResult.objects.filter(pk=result_id, runner=token).update(runner="")


def run_client(result_id: int) -> None:
    result = ClientResult.objects.select_related("round", "job", "device").get(pk=result_id)
    if result.state not in IN_FLIGHT_STATES:
        return  # done already (a redelivered task)
    if result.round.status != RoundStatus.TRAINING:
        _finish(result, ClientState.LATE, "the round closed before this phone started")
        return
    with claimed_run(result.pk) as token:
        if token is None:
            log.info("%s: a live run owns it; this delivery leaves it alone", result)
            return
        try:
            _run(result)
        except OutputMissing as exc:
            _finish(result, ClientState.FAILED, f"the agent wrote no {exc.name}")
        except ClientError as exc:
            _finish(result, ClientState.FAILED, exc.reason())
            if isinstance(exc, ClientOffline):
                _mark_offline(result, str(exc))
        finally:
            maybe_close_round(result.round_id)
    # The claim is released: a round that closed while this phone ran kept its lease (see
    # leases.release_idle), so the phone is released now, unless a round of the job holds it again.
    _release_if_round_closed(result)
    # A job that finished while this phone worked (cancelled, failed) was cleaned off the phone at
    # that moment, and this run may have written its files again since: clean once more, last.
    if Job.objects.filter(pk=result.job_id, status__in=FINISHED_JOB_STATUSES).exists():
        clean_phone(result.job_id, result.device_id)


def _release_if_round_closed(result: ClientResult) -> None:
    open_again = ClientResult.objects.filter(
        device_id=result.device_id, state__in=IN_FLIGHT_STATES, round__status=RoundStatus.TRAINING
    ).exists()
    if not open_again and not Round.objects.filter(pk=result.round_id, status=RoundStatus.TRAINING).exists():
        leases.release_idle(result.job_id, [result.device_id])


def cancel_client(result_id: int) -> None:
    """Stop this result's run on its phone (the round closed, or the job was cancelled, while it ran)."""
    result = ClientResult.objects.select_related("round", "device").get(pk=result_id)
    ref = RoundRef(job_id=result.job_id, round_number=result.round.number, attempt=result.round.attempt)
    try:
        runtime_for(result.device).cancel(result.device, ref)
    except ClientError as exc:  # the run ends at its own deadline; its output is discarded anyway
        log.info("could not cancel %s: %s", result, exc.reason())


def _run(result: ClientResult) -> None:
    rnd, job, device = result.round, result.job, result.device
    participant = Participant.objects.get(job=job, device=device)
    local_dir = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, device.pk)
    remaining = max(1.0, (rnd.deadline_at - timezone.now()).total_seconds())
    ref = RoundRef(job_id=job.pk, round_number=rnd.number, attempt=rnd.attempt)

    with runtime_for(device).session(device, ref) as session:
        t0 = time.monotonic()
        _set_state(result, ClientState.PUSHING)
        submodel = uploads.job_needs_request(job)
        prepared = session.prepare(
            job_files(job.pk, participant, submodel=submodel),
            # The union goes down only when this round's request config names it (the preset draws
            # decoys from U).
            send_union=submodel and _names_union(local_dir / "config.json"),
        )
        pushed = prepared.job_bytes
        request: RequestStep | None = None
        if submodel:  # the phone's index request decides what it downloads
            request = _request_step(session, result, participant, local_dir, remaining, prepared.union_bytes)
            if request is None:
                return
        # This round's model traffic (the union when it was sent, and the request step's config
        # included), apart from agent and shard.
        payload_down = request.bytes_down if request is not None else 0
        payload_down += session.deliver(local_dir, PAYLOAD_FILES)
        pushed += payload_down
        push_s = time.monotonic() - t0

        t1 = time.monotonic()
        if not _set_state(result, ClientState.TRAINING, push_s=push_s, bytes_down=pushed):
            return
        send_job_event(job.pk, "device.progress", round=rnd.number, device=device.pk, state="training")
        run = session.run("train", ProgressRelay(result), timeout_s=remaining)
        train_s = time.monotonic() - t1
        if run.exit_code != 0:
            why = run.failure()
            _finish(result, ClientState.FAILED, f"agent exited with {run.exit_code}: {why}", train_s=train_s)
            return

        t2 = time.monotonic()
        if not _set_state(result, ClientState.PULLING, train_s=train_s):
            return
        limit = expected_upload_bytes(local_dir)
        try:  # both sizes are checked before either file is fetched
            session.collect([(name, local_dir / name) for name in UPDATE_FILES], max_bytes=limit)
        except OutputTooLarge as exc:
            _finish(
                result, ClientState.REJECTED, f"{exc.name} is {exc.size_text()}, over the {limit}-byte limit"
            )
            return
        pull_s = time.monotonic() - t2

    weight = participant.num_samples
    if job.config.get("data_on_phone"):  # the phone's first report of its own data is recorded once
        weight = phone_data.record_first_report(participant, local_dir / "result.json", _num_classes(job))
    _accept(result, weight, local_dir, limit, pull_s, request, payload_down)


def _num_classes(job: Job) -> int:
    config = job_config(job)
    return int(cached_model_spec(job, config)["num_classes"])


def job_files(job_id: int, participant: Participant, *, submodel: bool) -> JobFiles:
    """What the phone keeps for the whole job (the runtime sends what it lacks). A phone-resident job's
    participants have no shard (shard_sha256 empty): nothing of the data is sent."""
    union = storage.union_path(job_id) if submodel else None
    return JobFiles(
        shard=storage.shard_path(job_id, participant.client_index) if participant.shard_sha256 else None,
        shard_sha256=participant.shard_sha256,
        union=union,
        union_sha256=union_sha256(union) if union is not None and union.exists() else None,
    )


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


def _request_step(
    session: ClientSession,
    result: ClientResult,
    participant: Participant,
    local_dir: Path,
    remaining: float,
    union_down: int,
) -> RequestStep | None:
    """Get this phone's index request (once per round attempt), check and record it, then write its
    submodel download (uploads.configure_client). None: the phone failed or was rejected (recorded).

    A redelivered task finds the request recorded and does not ask the phone again: a second
    randomized answer for the same round would let the server average two draws of the per-round stage.
    """
    rnd, device = result.round, result.device
    down, up = union_down, 0
    recorded = submodel_rounds.recorded_request_path(local_dir)
    if not recorded.exists():
        down += session.deliver(local_dir, ["config.json"])  # names U on the phone
        send_job_event(
            result.job_id, "device.progress", round=rnd.number, device=device.pk, state="requesting"
        )
        run = session.run("request", None, timeout_s=remaining)
        if run.exit_code != 0:
            why = run.failure()
            _finish(result, ClientState.FAILED, f"index request: agent exited with {run.exit_code}: {why}")
            return None
        limit = uploads.max_request_bytes(rnd)
        pulled = local_dir / "request.pulled.safetensors"
        try:
            up = session.collect([(submodel_rounds.REQUEST_FILE, pulled)], max_bytes=limit)
        except OutputMissing:
            _finish(result, ClientState.FAILED, "the agent wrote no index request")
            return None
        except OutputTooLarge as exc:
            _finish(
                result,
                ClientState.REJECTED,
                f"index request rejected: {exc.size_text()}, more than the whole union ({limit} bytes)",
            )
            return None
        try:
            tensors = load_tensors(pulled, max_bytes=limit)
        except InvalidUpdate as exc:
            _finish(result, ClientState.REJECTED, f"index request rejected: {exc}", bytes_up=up)
            return None
        errors = uploads.request_errors(rnd, tensors)
        if errors:
            _finish(result, ClientState.REJECTED, "index request rejected: " + "; ".join(errors), bytes_up=up)
            return None
        submodel_rounds.record_request(local_dir, tensors)
    else:
        up = recorded.stat().st_size
    rows = sum(int(t.numel()) for t in load_tensors(recorded, max_bytes=recorded.stat().st_size).values())
    uploads.configure_client(rnd, participant)
    return RequestStep(bytes_down=down, bytes_up=up, rows=rows)


def _accept(
    result: ClientResult,
    shard_samples: int,
    local_dir: Path,
    limit: int,
    pull_s: float,
    request: RequestStep | None = None,
    payload_down: int | None = None,
) -> None:
    up = sum((local_dir / n).stat().st_size for n in ("update.safetensors", "result.json"))
    up += request.bytes_up if request is not None else 0
    try:
        report = phone_json(
            (local_dir / "result.json").read_text(errors="replace"), max_chars=RESULT_MAX_CHARS
        )
        if not isinstance(report, dict):
            raise ValueError("result.json is not an object")
        samples = report.get("samples", 0)
        loss = _number(report.get("loss"))
        if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
            raise ValueError(f"result.json reports {samples!r} samples")
        tensors = load_tensors(local_dir / "update.safetensors", max_bytes=limit)
        errors = uploads.upload_errors(result.round, str(result.device_id), tensors, shard_samples)
        if errors:
            raise InvalidUpdate("; ".join(errors))
        # The weight of an update is bounded by the server's own record of the shard it sent (a phone
        # claiming more would outweigh every other phone in the average). Submodel clients train on the
        # samples their (randomized) request covers, which the server cannot know: fewer is allowed
        # there; everywhere else the claim must be the shard's size.
        partial = uploads.job_needs_request(result.job)
        if samples > shard_samples or (samples != shard_samples and not partial):
            raise ValueError(
                f"result.json claims {samples} samples, but this phone's shard holds {shard_samples}"
            )
    except (InvalidUpdate, ValueError, TypeError, OSError) as exc:  # PhoneJsonError is a ValueError
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
    device = Device.objects.get(pk=device_id)
    job_dir = storage.phone_job_dir(device.work_dir, job_id)
    try:
        runtime_for(device).clean_up(device, job_id)
    except ClientError as exc:
        services.log(job_id, f"could not remove the job's files from {device.name} ({job_dir}): {exc}")
        return False
    return True
