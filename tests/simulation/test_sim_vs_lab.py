"""A simulated job beside a lab job with the same config and seeds, and a training worker killed mid-batch.
Real parts: Celery workers (subprocesses), Redis, virtual phones over the real ADB protocol."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from devices.services import register_or_update_device
from tests.conftest import ManagedProcess, VirtualLab, _start_worker, make_user, wait_until
from tests.training.test_engine_integration import Every, register
from training.engine import watchdog
from training.jobs import storage
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientResult, ClientState, Job, JobStatus, Participant, Round, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT_S = 180.0
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED, JobStatus.CANCELLED)
# Same data, same seeds. The phones' and the clients' own shuffling seeds come from their ids (a phone's
# id, s0000N), so each client's step uses its whole shard (batch ≥ shard): order cannot matter.
SHARED = {
    "rounds": 1,
    "clients_per_round": 3,
    "min_clients": 3,
    "over_selection": 1.0,
    "local_epochs": 2,
    "batch_size": 10_000,
    "lr": 0.1,
    "seed": 5,
    "round_deadline_s": 90,
}


def wait_for_job(job: Job, *, tick: Callable[[], None] | None = None) -> Job:
    def done() -> Job | None:
        if tick is not None:
            tick()
        job.refresh_from_db()
        return job if job.status in FINISHED else None

    try:
        return wait_until(done, timeout_s=JOB_TIMEOUT_S, interval_s=0.2, what=f"job {job.pk} to finish")
    except AssertionError:
        log = "\n".join(e.message for e in reversed(job.log_entries.all()))
        raise AssertionError(f"job {job.pk} is {job.status}; its log:\n{log}") from None


def pad_device_ids_to_two_digits() -> None:
    """The strategy's random pick sorts client ids as strings; phone ids of one digit count sort as the
    clients' zero-padded ids do (in registration order = client index order). Throwaway rows use up the
    one-digit ids (a fresh database hands them out first)."""
    pads = []
    while not pads or pads[-1].pk < 9:
        pads.append(
            register_or_update_device(
                name=f"pad-{len(pads)}", transport="tcp", address=f"127.0.0.1:{2 + len(pads)}"
            )
        )
    for pad in pads:
        pad.delete()


def selected_indices(job: Job) -> list[int]:
    index_of = dict(Participant.objects.filter(job=job).values_list("device_id", "client_index"))
    rows = ClientResult.objects.filter(job=job, round__number=1)
    return sorted(r.client_index if r.device_id is None else index_of[r.device_id] for r in rows)


def test_a_simulated_job_and_its_lab_twin_select_alike_and_agree_after_round_1(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab]
) -> None:
    pad_device_ids_to_two_digits()
    register(virtual_phones(4, seed=31), "twin")
    owner = make_user("owner-twin", None)
    lab = create_job(owner, parse_job_config({"name": "twin-lab", "device_tags": ["twin"], **SHARED}))
    sim = create_job(
        owner,
        parse_job_config({"name": "twin-sim", "backend": "simulation", "sim_clients": 4, **SHARED}),
    )
    lab, sim = wait_for_job(lab), wait_for_job(sim)
    assert lab.status == sim.status == JobStatus.COMPLETED, (lab.error, sim.error)
    assert len(selected_indices(lab)) == 3
    assert selected_indices(sim) == selected_indices(lab)
    lab_weights = storage.load_checkpoint(lab.pk, 1).weights
    sim_weights = storage.load_checkpoint(sim.pk, 1).weights
    initial = storage.load_checkpoint(sim.pk, 0).weights
    for name, tensor in lab_weights.items():
        assert torch.allclose(sim_weights[name], tensor, atol=1e-5), name
    assert any(not torch.equal(initial[n], sim_weights[n]) for n in initial)  # round 1 moved the model
    assert sim.last_accuracy == pytest.approx(lab.last_accuracy, abs=1e-9)


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def kill_worker_tree(worker: ManagedProcess) -> None:
    """SIGKILL a prefork worker and its pool processes at once: the batch dies half-way."""
    for child in children_of(worker.process.pid):
        os.kill(child, signal.SIGKILL)
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=10)


def test_a_training_worker_killed_mid_batch_loses_no_client_and_counts_none_twice(
    celery_worker: dict[str, ManagedProcess], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "name": "sim-kill",
        "backend": "simulation",
        "sim_clients": 1000,
        "rounds": 2,
        "clients_per_round": 100,
        "local_epochs": 100,  # a batch that trains for seconds: long enough to be killed in
        "batch_size": 1,
        "lr": 0.01,
        "sim_params": {"batch_clients": 50},
    }
    job = create_job(make_user("owner-kill", None), parse_job_config(config))
    wait_until(
        lambda: ClientResult.objects.filter(job=job, round__number=1, state=ClientState.TRAINING).exists(),
        timeout_s=JOB_TIMEOUT_S,
        interval_s=0.02,
        what="a batch of round 1 to be training",
    )
    victim = celery_worker["training"]
    kill_worker_tree(victim)
    reported_at_kill = ClientResult.objects.filter(
        job=job, round__number=1, state=ClientState.REPORTED
    ).count()
    assert reported_at_kill < 100  # killed mid-round
    replacement = _start_worker("worker-training-2", "training", "prefork", 1, subprocess_env, tmp_path)
    try:
        job = wait_for_job(job, tick=Every(watchdog.watchdog, 5.0))  # the watchdog re-sends the batches
    finally:
        victim.process, victim.log_path = replacement.process, replacement.log_path
    assert job.status == JobStatus.COMPLETED, job.error
    committed = Round.objects.filter(job=job, status=RoundStatus.COMMITTED).order_by("number")
    assert [r.number for r in committed] == [1, 2]
    for rnd in committed:
        results = rnd.client_results
        assert results.filter(state=ClientState.REPORTED).count() == 100  # no client lost
        assert not results.exclude(state__in=(ClientState.REPORTED, ClientState.LATE)).exists()
    reported = ClientResult.objects.filter(
        job=job, state=ClientState.REPORTED, round__status=RoundStatus.COMMITTED
    )
    # ... and none counted twice: each report moved its client's count once.
    assert (
        sum(Participant.objects.filter(job=job).values_list("rounds_reported", flat=True))
        == reported.count()
        == 200
    )
