"""train_batch: a batch of simulated clients trained in-process, on the training queue.

Idempotent like run_client (client.py): the batch claims its clients' ClientResults with an owner token and
beats while it trains; a redelivered or re-sent batch (a worker killed mid-batch) claims only the clients
still in flight whose owner stopped beating, so no client is trained by two live runs and none is lost.
Each run writes its clients' updates to a file of its own (one per claim), then moves exactly the rows it
still owns to reported in one transaction — a client is counted once, whichever run got there first.

Stateful clients (SCAFFOLD's c_i) train on a copy of their state; it replaces the kept state only when the
client's report is recorded, so a run killed half-way leaves the state as it was for the retry.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from django.db import DatabaseError, transaction
from django.db import connection as db_connection
from django.db.models import Q
from django.utils import timezone

from training.engine import closing
from training.engine.configure import base_agent_config
from training.engine.jobdata import cached_model_spec, job_config, job_data, job_strategy, total_samples
from training.engine.sim_clients import population
from training.engine.sim_updates import sim_round_dir
from training.engine.simulation import client_parts, payload_bytes
from training.fl.client import HONEST, ClientTask, TrainingDiverged, client_config_for_round, client_train
from training.fl.strategy import ServerState
from training.fl.wire import save_tensors
from training.jobs import leases, storage
from training.jobs.events import send_job_event
from training.models import (
    IN_FLIGHT_STATES,
    ClientResult,
    ClientState,
    Job,
    Round,
    RoundStatus,
    sim_client_id,
)

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0


def client_state_dir(job_id: int, index: int) -> Path:
    return storage.job_dir(job_id) / "sim" / "state" / f"{index:05d}"


# ------------------------------------------------------------------------------------------- claims
def claim_batch(round_id: int, indices: Sequence[int]) -> tuple[str, list[int]]:
    """Claim the batch's clients still in flight that no live run holds; (token, claimed indices)."""
    token = uuid.uuid4().hex
    now = timezone.now()
    stale = now - timedelta(seconds=leases.RUN_STALE_AFTER_S)
    rows = ClientResult.objects.filter(
        round_id=round_id, device__isnull=True, client_index__in=list(indices), state__in=IN_FLIGHT_STATES
    ).filter(Q(runner="") | Q(runner_seen_at__lt=stale) | Q(runner_seen_at__isnull=True))
    rows.update(runner=token, runner_seen_at=now, state=ClientState.TRAINING)
    claimed = ClientResult.objects.filter(round_id=round_id, runner=token).values_list(
        "client_index", flat=True
    )
    return token, sorted(int(i) for i in claimed if i is not None)


class BatchHeartbeat(threading.Thread):
    def __init__(self, round_id: int, token: str) -> None:
        super().__init__(name=f"batch-heartbeat-{round_id}", daemon=True)
        self.round_id, self.token = round_id, token
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.wait(HEARTBEAT_EVERY_S):
                ClientResult.objects.filter(round_id=self.round_id, runner=self.token).update(
                    runner_seen_at=timezone.now()
                )
        except DatabaseError:
            log.warning("heartbeat of a batch of round %s failed", self.round_id, exc_info=True)
        finally:
            db_connection.close()


@contextmanager
def claimed_batch(round_id: int, indices: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
    token, claimed = claim_batch(round_id, indices)
    if not claimed:
        yield token, claimed
        return
    heartbeat = BatchHeartbeat(round_id, token)
    heartbeat.start()
    try:
        yield token, claimed
    finally:
        heartbeat.halt.set()
        heartbeat.join(timeout=HEARTBEAT_EVERY_S)
        ClientResult.objects.filter(round_id=round_id, runner=token).update(runner="")


# ------------------------------------------------------------------------------------------- training
@dataclass
class Trained:
    index: int
    state: str  # REPORTED, FAILED or REJECTED
    reason: str = ""
    tensors: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] | None = None
    loss: float | None = None
    samples: int = 0
    real_s: float = 0.0


_STATES: dict[tuple[int, int], ServerState] = {}


def round_state(job_id: int, round_no: int) -> ServerState:
    """The checkpoint a round trains from, loaded once per process (batches of a round share it)."""
    key = (job_id, round_no)
    if key not in _STATES:
        if len(_STATES) > 4:
            _STATES.clear()
        _STATES[key] = storage.load_checkpoint(job_id, round_no)
    return _STATES[key]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Small per-client models gain nothing from intra-op threads, and on a loaded machine the thread pool's
    hand-offs cost more than the work (100 one-step MLP clients: 0.22 s on one thread, 0.48 s on two);
    batches run in parallel as processes of the training worker instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_clients(job: Job, rnd: Round, indices: Sequence[int], scratch: Path) -> list[Trained]:
    """Each client's local training, as the agent runs it on a phone (training.fl.client.client_train),
    with the config the lab's configure.write_payload would write for it."""
    with one_torch_thread():
        return _train_clients(job, rnd, indices, scratch)


def _train_clients(job: Job, rnd: Round, indices: Sequence[int], scratch: Path) -> list[Trained]:
    config = job_config(job)
    state = round_state(job.pk, rnd.number - 1)
    strategy = job_strategy(job, config)
    ids = [sim_client_id(i) for i in indices]
    plan = strategy.configure(state, rnd.number, ids, base_agent_config(config))
    splits = job_data(job, config)
    parts = client_parts(job, config)
    spec = cached_model_spec(job, config)
    behaviours = population(job.pk, config).behaviours
    shared = {
        "job": job.pk,
        "attempt": rnd.attempt,
        "model": spec,
        "num_clients": config.sim_clients,
        "total_samples": total_samples(job),
    }
    out: list[Trained] = []
    for instructions in plan:
        index = int(instructions.client_id[1:])
        started = time.perf_counter()
        rows = torch.as_tensor(parts[index])
        extra = instructions.config
        client_config = {
            **client_config_for_round(
                extra, job_seed=config.seed, round_no=rnd.number, client_id=instructions.client_id
            ),
            **shared,
            "algorithm": str(extra.get("algorithm", config.algorithm)),
            "num_samples": len(rows),
        }
        state_dir = scratch / f"{index:05d}"
        kept = client_state_dir(job.pk, index)
        if kept.exists():
            shutil.copytree(kept, state_dir, dirs_exist_ok=True)
        task = ClientTask(
            config=client_config,
            received=instructions.tensors,
            x=splits.train.x[rows],
            y=splits.train.y[rows],
            state_dir=state_dir,
            behaviour=behaviours.get(index, HONEST),
        )
        try:
            result = client_train(task)
        except (TrainingDiverged, ValueError) as exc:
            out.append(Trained(index, ClientState.FAILED, f"local training failed: {exc}"))
            continue
        upload = result.upload()
        if result.num_samples != len(rows):
            reason = f"update rejected: claims {result.num_samples} samples, but this client's shard holds {len(rows)}"
            out.append(Trained(index, ClientState.REJECTED, reason))
            continue
        errors = strategy.validate_upload(state, instructions.client_id, upload, len(rows))
        if errors:
            out.append(Trained(index, ClientState.REJECTED, "update rejected: " + "; ".join(errors)))
            continue
        out.append(
            Trained(
                index,
                ClientState.REPORTED,
                tensors=dict(upload),
                metrics=result.metrics(),
                loss=result.loss_after,
                samples=len(rows),
                real_s=time.perf_counter() - started,
            )
        )
    return out


def train_batch(round_id: int, indices: Sequence[int]) -> None:
    """Train one batch of a simulated round's clients and record them; close the round when it is done."""
    rnd = Round.objects.select_related("job").get(pk=round_id)
    if rnd.status != RoundStatus.TRAINING:
        return  # closed already: its in-flight clients were marked late by the close
    with claimed_batch(round_id, indices) as (token, claimed):
        if not claimed:
            log.info("%s: batch %s already done or held by a live run", rnd, list(indices)[:5])
        else:
            directory = sim_round_dir(rnd.job_id, rnd.number, rnd.attempt)
            scratch = directory / f"state-{token}"
            trained = train_clients(rnd.job, rnd, claimed, scratch)
            name = f"batch-{token}.safetensors"
            tensors = {
                f"{t.index}/{key}": value for t in trained if t.tensors for key, value in t.tensors.items()
            }
            if tensors:
                save_tensors(directory / name, tensors)  # before the rows say reported: never a dangling name
            record(rnd, token, trained, name, scratch)
            shutil.rmtree(scratch, ignore_errors=True)
    if closing.round_ready_to_close(Round.objects.get(pk=round_id)):
        closing.close_round(round_id)


def record(rnd: Round, token: str, trained: list[Trained], file_name: str, scratch: Path) -> None:
    """Move the rows this run still owns to their outcome, once; keep the reporters' new client state."""
    now = timezone.now()
    by_index = {t.index: t for t in trained}
    with transaction.atomic():
        rows = list(
            ClientResult.objects.select_for_update().filter(
                round_id=rnd.pk, runner=token, state__in=IN_FLIGHT_STATES, round__status=RoundStatus.TRAINING
            )
        )
        for row in rows:
            outcome = by_index.get(row.client_index or 0)
            if outcome is None:  # not in the plan (cannot happen: every claimed client is configured)
                row.state, row.reason = ClientState.FAILED, "the strategy configured no training for it"
                continue
            row.state, row.reason = outcome.state, outcome.reason[:300]
            if outcome.state == ClientState.REPORTED:
                row.num_samples, row.loss, row.reported_at = outcome.samples, outcome.loss, now
                size = payload_bytes(outcome.tensors or {})
                row.bytes_down, row.bytes_up = size, size
                row.metrics = {
                    **row.metrics,
                    **(outcome.metrics or {}),
                    "sim_file": file_name,
                    "real_train_s": outcome.real_s,
                }
        ClientResult.objects.bulk_update(
            rows,
            ["state", "reason", "num_samples", "loss", "reported_at", "bytes_down", "bytes_up", "metrics"],
        )
        reported = [r.client_index for r in rows if r.state == ClientState.REPORTED]
        for index in reported:
            source = scratch / f"{index:05d}"
            if source.exists() and any(source.iterdir()):
                target = client_state_dir(rnd.job_id, int(index or 0))
                shutil.copytree(source, target, dirs_exist_ok=True)
        send_job_event(rnd.job_id, "batch.finished", round=rnd.number, reported=len(reported))
