"""Federated jobs end to end through the real parts: Celery workers (subprocesses), Redis, the ADB wire
protocol, virtual phones running the agent. Nothing here is faked."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devices import adb
from devices import tasks as device_tasks
from devices.models import Device, DeviceStatus
from devices.services import register_or_update_device
from tests.conftest import ManagedProcess, VirtualLab, _start_worker, make_user, wait_until
from training.engine import watchdog
from training.jobs import storage
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientResult, ClientState, Job, JobStatus, Round, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT_S = 180.0


def register(lab: VirtualLab, prefix: str, *, agent_python: str = "python3") -> list[Device]:
    """Register a lab's phones and probe them once, as the fleet page's "test connection" does."""
    devices = []
    for index, phone in enumerate(lab.phones):
        device = register_or_update_device(
            name=f"{prefix}-{index}",
            transport="tcp",
            address=phone.address,
            tags=["virtual", prefix],
            agent_python=agent_python,
        )
        assert device_tasks.probe_device(device.pk) == DeviceStatus.ONLINE
        devices.append(device)
    return devices


def launch(tag: str, **overrides: Any) -> Job:
    owner = make_user(f"owner-{tag}", None)
    config = {
        "name": f"it-{tag}",
        "rounds": 3,
        "clients_per_round": 3,
        "local_epochs": 1,
        "round_deadline_s": 60,
        "device_tags": [tag],
        **overrides,
    }
    return create_job(owner, parse_job_config(config))


class Every:
    """Call `action` at most once per `period_s` from a polling loop (e.g. play beat's watchdog)."""

    def __init__(self, action: Callable[[], None], period_s: float) -> None:
        self.action, self.period_s, self.last = action, period_s, 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.period_s:
            self.last = now
            self.action()


def wait_for_job(job: Job, statuses: tuple[str, ...], *, tick: Callable[[], None] | None = None) -> Job:
    def done() -> Job | None:
        if tick is not None:
            tick()
        job.refresh_from_db()
        return job if job.status in statuses else None

    try:
        return wait_until(
            done, timeout_s=JOB_TIMEOUT_S, interval_s=0.2, what=f"job {job.pk} to reach {statuses}"
        )
    except AssertionError:
        log = "\n".join(e.message for e in reversed(job.log_entries.all()))
        raise AssertionError(f"job {job.pk} is {job.status}; its log:\n{log}") from None


def committed_numbers(job: Job) -> list[int]:
    return list(
        job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number").values_list("number", flat=True)
    )


def test_three_round_fedavg_job_on_four_phones(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab]
) -> None:
    register(virtual_phones(4, seed=11), "happy")
    job = wait_for_job(launch("happy"), (JobStatus.COMPLETED, JobStatus.FAILED))

    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2, 3]
    assert job.committed_rounds == 3
    # Ten classes: chance is 10%. Three rounds of FedAvg on digits get far beyond it.
    assert job.last_accuracy is not None and job.last_accuracy > 0.6
    for number in range(4):  # one checkpoint per round (round 0 is the initial model)
        assert storage.checkpoint_path(job.pk, number).exists()
    for rnd in job.rounds.all():
        reported = rnd.client_results.filter(state=ClientState.REPORTED)
        assert reported.count() == rnd.goal
        assert all(r.bytes_up > 0 and r.bytes_down > 0 and r.num_samples for r in reported)
        assert rnd.wall_s > 0 and rnd.train_s > 0
    # Leases are released: every phone is free again.
    assert not Device.objects.filter(lease_job_id=job.pk).exists()
    # ...and holds nothing of the finished job any more (shard, state, last round dir); the agent stays.
    devices = list(Device.objects.filter(participations__job=job))

    def job_files_left() -> list[str]:
        left = []
        for device in devices:
            with adb.connect(adb.Target("tcp", device.address)) as phone:
                job_dir = storage.phone_job_dir(device.work_dir, job.pk)
                if phone.stat(job_dir) is not None:
                    left.append(device.name)
                # The parent of the job dir is still there (so job_dir named the right place), and so is
                # the agent.
                assert phone.stat(job_dir.rsplit("/", 1)[0]) is not None
                assert phone.stat(storage.phone_agent_path(device.work_dir)) is not None
        return left

    wait_until(lambda: not job_files_left(), timeout_s=30, what="the job's files to leave the phones")


def stall_next_run(control: Path, serial: str, *, seconds: float) -> None:
    """Ask a lab's control socket (devices/virtual/control.py) to hang the phone's next agent run."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(control))
        sock.sendall(json.dumps({"op": "stall_run", "phone": serial, "seconds": seconds}).encode() + b"\n")
        assert json.loads(sock.makefile("rb").readline())["ok"]


def test_phone_dropping_mid_round_is_recorded_and_the_round_commits(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab]
) -> None:
    register(virtual_phones(3, seed=21), "drop")
    control = Path(f"/tmp/ff-ctl-{os.getpid()}-drop.sock")  # noqa: S108 - AF_UNIX paths are short
    doomed_lab = virtual_phones(1, seed=22, extra=("--control-socket", str(control)))
    (doomed,) = register(doomed_lab, "drop-extra")
    # Its agent hangs, so it cannot report before it vanishes (a fast round otherwise raced the stop).
    stall_next_run(control, doomed_lab.phones[0].serial, seconds=60)
    doomed.tags.add(*Device.objects.get(name="drop-0").tags.all())

    # 4 phones, goal 3, minimum 3: all four are selected (130% over-selection) and one vanishes.
    job = launch("drop", rounds=1, min_clients=3)
    wait_until(
        lambda: ClientResult.objects.filter(job=job, device=doomed).exists(),
        timeout_s=JOB_TIMEOUT_S,
        what="round 1 to select the doomed phone",
    )
    doomed_lab.stop()
    job = wait_for_job(job, (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED))

    assert job.status == JobStatus.COMPLETED
    assert committed_numbers(job) == [1]
    dropped = ClientResult.objects.get(job=job, device=doomed)
    assert dropped.state == ClientState.FAILED
    assert dropped.reason  # says why, e.g. "phone went offline: ..."
    assert ClientResult.objects.filter(job=job, state=ClientState.REPORTED).count() == 3


# A phone whose "agent" is this script: it answers every round with a malformed update.
EVIL_AGENT = """
import json, pathlib, sys
import torch
from safetensors.torch import load_file, save_file
mode, round_dir = sys.argv[1], pathlib.Path(sys.argv[-1])
weights = load_file(str(round_dir / "global.safetensors"))
update = {k: torch.zeros_like(v) for k, v in weights.items()}
name = next(iter(update))
if mode == "nan":
    update[name] = torch.full_like(update[name], float("nan"))
elif mode == "shape":
    update[name] = torch.zeros(3, 3)
elif mode == "huge":
    update["padding"] = torch.zeros(8 * 1024 * 1024)
save_file(update, str(round_dir / "update.safetensors"))
(round_dir / "result.json").write_text(json.dumps({"samples": 50, "loss": 0.1}))
print(json.dumps({"event": "done"}))
"""


def test_malformed_updates_are_rejected_and_the_round_goes_on(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab], tmp_path: Path
) -> None:
    register(virtual_phones(3, seed=31), "evil")
    evil_lab = virtual_phones(3, seed=32)
    script = tmp_path / "evil.py"
    script.write_text(EVIL_AGENT)
    evil_devices = []
    for mode, phone in zip(("nan", "shape", "huge"), evil_lab.phones, strict=True):
        remote = "/data/local/tmp/evil.py"
        with adb.connect(adb.Target("tcp", phone.address)) as conn:
            conn.push(script, remote)
        device = register_or_update_device(
            name=f"evil-{mode}",
            transport="tcp",
            address=phone.address,
            tags=["evil"],
            agent_python=f"python3 {remote} {shlex.quote(mode)}",
        )
        assert device_tasks.probe_device(device.pk) == DeviceStatus.ONLINE
        evil_devices.append(device)

    # Six phones, goal 6, minimum 3: the round waits for every phone, rejects the three bad uploads and
    # commits with the three good ones.
    # Three local epochs: one round on three honest phones then lands well clear of chance (one epoch
    # gave 0.27-0.5, depending on which device ids, and so which client seeds, the session handed out).
    job = launch("evil", rounds=1, clients_per_round=6, min_clients=3, local_epochs=3)
    job = wait_for_job(job, (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED))

    assert job.status == JobStatus.COMPLETED
    reasons = {
        r.device.name: (r.state, r.reason)
        for r in ClientResult.objects.filter(job=job).select_related("device")
    }
    assert reasons["evil-nan"][0] == ClientState.REJECTED and "finite" in reasons["evil-nan"][1].lower()
    assert reasons["evil-shape"][0] == ClientState.REJECTED and "shape" in reasons["evil-shape"][1].lower()
    assert reasons["evil-huge"][0] == ClientState.REJECTED
    assert "limit" in reasons["evil-huge"][1] or "padding" in reasons["evil-huge"][1]
    rnd = job.rounds.get(status=RoundStatus.COMMITTED)
    # The committed model is the mean of the honest updates alone: finite, and well above chance (0.1).
    assert rnd.accuracy is not None and rnd.accuracy > 0.35 and math.isfinite(rnd.loss)


def test_worker_killed_mid_round_resumes_without_losing_or_repeating_rounds(
    celery_worker: dict[str, ManagedProcess],
    virtual_phones: Callable[..., VirtualLab],
    subprocess_env: dict[str, str],
    tmp_path: Path,
) -> None:
    register(virtual_phones(4, seed=41), "crash")
    # A worker of its own, killed below; the session's devices worker keeps serving the other tests.
    victim = celery_worker["devices"]
    job = launch("crash", rounds=4, round_deadline_s=8, local_epochs=3)
    wait_until(
        lambda: (
            Round.objects.filter(job=job, number=2, status=RoundStatus.TRAINING).exists()
            and ClientResult.objects.filter(job=job, round__number=2, state=ClientState.TRAINING).exists()
        ),
        timeout_s=JOB_TIMEOUT_S,
        interval_s=0.02,
        what="round 2 to be training",
    )
    victim.process.send_signal(signal.SIGKILL)  # no warm shutdown: tasks in flight die with it
    victim.process.wait(timeout=10)
    replacement = _start_worker("worker-devices-2", "devices", "threads", 8, subprocess_env, tmp_path)
    celery_worker["devices"] = replacement
    try:
        # Beat's watchdog re-drives rounds whose tasks died; the test plays beat.
        job = wait_for_job(
            job, (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED), tick=Every(watchdog.watchdog, 2.0)
        )
    finally:
        victim.process = replacement.process
        victim.log_path = replacement.log_path

    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2, 3, 4]  # none lost, none counted twice
    assert job.committed_rounds == 4
    assert Round.objects.filter(job=job, number=2).count() >= 1


def test_pause_finishes_the_round_then_resume_and_cancel(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab]
) -> None:
    from training.jobs.services import JobActionError, cancel_job, pause_job, resume_job

    register(virtual_phones(3, seed=61), "pause")
    job = launch("pause", rounds=6, clients_per_round=2)
    owner = job.owner
    wait_until(
        lambda: Round.objects.filter(job=job, number=1).exists(), timeout_s=JOB_TIMEOUT_S, what="round 1"
    )
    pause_job(job, owner)
    # The round in flight still commits; no round starts after it.
    wait_until(
        lambda: (
            not Round.objects.filter(job=job)
            .exclude(status__in=[RoundStatus.COMMITTED, RoundStatus.ABANDONED])
            .exists()
        ),
        timeout_s=JOB_TIMEOUT_S,
        what="the open round to finish",
    )
    job.refresh_from_db()
    paused_at = job.committed_rounds
    assert job.status == JobStatus.PAUSED and paused_at >= 1
    assert not Device.objects.filter(lease_job_id=job.pk).exists()  # phones are free while paused
    with pytest.raises(JobActionError):
        pause_job(job, owner)

    resume_job(job, owner)
    wait_until(
        lambda: Job.objects.get(pk=job.pk).committed_rounds > paused_at,
        timeout_s=JOB_TIMEOUT_S,
        what="a round after resuming",
    )
    job.refresh_from_db()
    cancel_job(job, owner)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert committed_numbers(job) == list(range(1, job.committed_rounds + 1))
    with pytest.raises(JobActionError):
        resume_job(job, owner)
