"""Issue 12 through the real parts — Celery workers and beat (subprocesses), Redis, the ADB wire protocol,
virtual phones whose lab records every agent run: exactly one agent per phone per round, a phone that lies
about its samples, late phones stopped, workers killed with only beat's watchdog to recover."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Q

from devices.models import Device, DeviceStatus
from tests.conftest import (
    BIN,
    ManagedProcess,
    VirtualLab,
    _start_worker,
    _wait_for_log,
    start_process,
    wait_until,
)
from tests.training.test_engine_integration import (
    JOB_TIMEOUT_S,
    committed_numbers,
    launch,
    register,
    wait_for_job,
)
from training.jobs import leases
from training.jobs.services import pause_job, resume_job
from training.models import IN_FLIGHT_STATES, ClientResult, ClientState, JobStatus, Round, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED)


class ControlledLab:
    """A virtual lab with its control socket and its record of agent runs (devices/virtual/control.py)."""

    def __init__(self, lab: VirtualLab, socket_path: Path, runs_path: Path) -> None:
        self.lab, self.socket_path, self.runs_path = lab, socket_path, runs_path

    def control(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = sock.makefile("rb").readline()
        reply = json.loads(answer)
        assert reply.get("ok"), reply
        return reply

    def overlaps(self) -> int:
        """Agent runs that started while another run of the same phone was alive."""
        return int(self.control(op="status")["runs"]["overlaps"])

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.runs_path.read_text().splitlines() if line.strip()]


@pytest.fixture
def controlled_lab(virtual_phones: Callable[..., VirtualLab]) -> Callable[..., ControlledLab]:
    def start(count: int, *, seed: int, extra: tuple[str, ...] = ()) -> ControlledLab:
        control = Path(f"/tmp/ff-ctl-{os.getpid()}-{seed}.sock")  # noqa: S108 - AF_UNIX paths are short
        lab = virtual_phones(count, seed=seed, extra=("--control-socket", str(control), *extra))
        assert lab.lab_dir is not None
        return ControlledLab(lab, control, lab.lab_dir / "agent_runs.jsonl")

    return start


def serials_of(devices: list[Device], lab: ControlledLab) -> dict[int, str]:
    by_address = {phone.address: phone.serial for phone in lab.lab.phones}
    return {device.pk: by_address[device.address] for device in devices}


def assert_one_agent_per_phone(job_id: int) -> None:
    """The invariant sampled while a job runs: no phone in flight twice, no phone with two live runs."""
    in_flight = list(
        ClientResult.objects.filter(
            state__in=IN_FLIGHT_STATES, round__status=RoundStatus.TRAINING
        ).values_list("device_id", flat=True)
    )
    assert len(in_flight) == len(set(in_flight)), f"a phone is in flight twice: {in_flight}"
    live = list(ClientResult.objects.filter(leases.live_run_filter()).values_list("device_id", flat=True))
    assert len(live) == len(set(live)), f"a phone has two live runs: {live}"


def test_a_phone_claiming_a_billion_samples_is_rejected_and_the_rounds_go_on(
    celery_worker: dict[str, ManagedProcess], controlled_lab: Callable[..., ControlledLab]
) -> None:
    lab = controlled_lab(
        4, seed=121, extra=("--misbehave", "1", "--behaviour", "inflate_samples:factor=1000000000")
    )
    register(lab.lab, "boast")
    job = launch("boast", rounds=2, clients_per_round=4, min_clients=3, local_epochs=2)
    job = wait_for_job(job, FINISHED)
    assert job.status == JobStatus.COMPLETED, job.error
    rejected = list(ClientResult.objects.filter(job=job, state=ClientState.REJECTED))
    assert len(rejected) == 2  # the liar, in each round
    assert {r.device_id for r in rejected} == {rejected[0].device_id}
    assert all("000000000 samples, but this phone's shard holds" in r.reason for r in rejected)
    assert committed_numbers(job) == [1, 2]
    assert job.last_accuracy is not None and job.last_accuracy > 0.3  # the honest three, weighed fairly


def test_resuming_while_a_round_is_open_never_starts_a_second_agent(
    celery_worker: dict[str, ManagedProcess], controlled_lab: Callable[..., ControlledLab]
) -> None:
    lab = controlled_lab(3, seed=122)
    devices = register(lab.lab, "resume")
    for serial in serials_of(devices, lab).values():  # round 1's agents hang a while: resume meets them
        lab.control(op="stall_run", phone=serial, seconds=4)
    job = launch("resume", rounds=2, clients_per_round=3, min_clients=3)
    wait_until(
        lambda: (
            ClientResult.objects.filter(job=job, round__number=1, state=ClientState.TRAINING).count() == 3
        ),
        timeout_s=JOB_TIMEOUT_S,
        interval_s=0.05,
        what="round 1's phones to be training",
    )
    pause_job(job, job.owner)
    resume_job(job, job.owner)  # re-drives the open round: run_client again for every phone in flight
    job = wait_for_job(job, FINISHED, tick=lambda: assert_one_agent_per_phone(job.pk))
    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2]
    assert lab.overlaps() == 0
    assert "a live run owns it; this delivery leaves it alone" in celery_worker["devices"].log()
    starts = [r for r in lab.runs() if r.get("event") == "start" and "train" in r.get("args", [])]
    assert len(starts) == 6, starts  # three phones, two rounds, one agent each


def test_a_late_phone_is_stopped_and_keeps_its_lease_until_its_agent_is_gone(
    celery_worker: dict[str, ManagedProcess], controlled_lab: Callable[..., ControlledLab]
) -> None:
    lab = controlled_lab(3, seed=123)
    devices = register(lab.lab, "late")
    serials = serials_of(devices, lab)
    slow = devices[0]
    lab.control(op="stall_run", phone=serials[slow.pk], seconds=6)  # still starting when the goal is met
    # Goal 2 of 3 selected (over-selection): the round closes without the slow phone.
    job = launch("late", rounds=3, clients_per_round=2, min_clients=2, round_deadline_s=60)
    saw_lease_kept: list[bool] = []

    def watch() -> None:
        assert_one_agent_per_phone(job.pk)
        late = ClientResult.objects.filter(
            job=job, device=slow, round__number=1, state=ClientState.LATE
        ).first()
        if late is not None and late.runner:
            device = Device.objects.get(pk=slow.pk)
            saw_lease_kept.append(device.lease_job_id == job.pk and device.status == DeviceStatus.BUSY)

    job = wait_for_job(job, FINISHED, tick=watch)
    assert job.status == JobStatus.COMPLETED, job.error
    first = ClientResult.objects.get(job=job, device=slow, round__number=1)
    assert first.state == ClientState.LATE and "goal reached" in first.reason
    assert saw_lease_kept and all(saw_lease_kept)  # held while its agent ran on
    assert lab.overlaps() == 0

    # Its agent was told to stop: once its stall ends it sees the cancel flag and exits at once, long
    # before the 60 s deadline; only then is the phone released.
    def slow_exit() -> dict[str, Any] | None:
        exits = [r for r in lab.runs() if r.get("phone") == serials[slow.pk] and r.get("event") == "exit"]
        return exits[0] if exits else None

    exit_record = wait_until(slow_exit, timeout_s=60, what="the late phone's agent to exit")
    assert exit_record["status"] != 0, exit_record
    wait_until(  # the lease goes first, then the status: wait for both
        lambda: not Device.objects.filter(Q(lease_job_id=job.pk) | Q(status=DeviceStatus.BUSY)).exists(),
        timeout_s=30,
        what="the late phone's lease to be released after its run",
    )
    assert ClientResult.objects.get(job=job, device=slow, round__number=1).runner == ""


@pytest.fixture
def celery_beat(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ManagedProcess]:
    """The real `celery beat`: its schedule runs the round engine's watchdog every few seconds."""
    argv = [str(BIN / "celery"), "-A", "config", "beat", "-s", str(tmp_path / "beat-schedule"), "-l", "INFO"]
    beat = start_process("beat", argv, subprocess_env, tmp_path)
    _wait_for_log(beat, "beat: Starting")
    yield beat
    beat.stop()


@pytest.mark.parametrize("victim_queue", ["devices", "training"])
def test_a_worker_killed_mid_round_is_recovered_by_beats_watchdog_alone(
    celery_worker: dict[str, ManagedProcess],
    celery_beat: ManagedProcess,
    controlled_lab: Callable[..., ControlledLab],
    subprocess_env: dict[str, str],
    tmp_path: Path,
    victim_queue: str,
) -> None:
    lab = controlled_lab(4, seed=124 if victim_queue == "devices" else 125)
    register(lab.lab, f"beat-{victim_queue}")
    job = launch(f"beat-{victim_queue}", rounds=4, round_deadline_s=8, local_epochs=3)
    wait_until(
        lambda: (
            Round.objects.filter(job=job, number=2, status=RoundStatus.TRAINING).exists()
            and ClientResult.objects.filter(job=job, round__number=2, state=ClientState.TRAINING).exists()
        ),
        timeout_s=JOB_TIMEOUT_S,
        interval_s=0.02,
        what="round 2 to be training",
    )
    victim = celery_worker[victim_queue]
    victim.process.send_signal(signal.SIGKILL)  # no warm shutdown: its tasks die with it
    victim.process.wait(timeout=10)
    pool, concurrency = ("threads", 8) if victim_queue == "devices" else ("prefork", 2)
    replacement = _start_worker(
        f"worker-{victim_queue}-2", victim_queue, pool, concurrency, subprocess_env, tmp_path
    )
    celery_worker[victim_queue] = replacement
    try:
        job = wait_for_job(
            job, FINISHED, tick=lambda: assert_one_agent_per_phone(job.pk)
        )  # no test-driven ticks
    finally:
        victim.process = replacement.process
        victim.log_path = replacement.log_path
    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2, 3, 4]  # none lost, none counted twice
    assert job.committed_rounds == 4
    assert lab.overlaps() == 0
    wait_until(
        lambda: not Device.objects.filter(status=DeviceStatus.BUSY).exists(),
        timeout_s=60,
        what="every phone to be free (stranded leases released)",
    )
