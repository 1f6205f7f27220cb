"""Availability recorded by a real job (Celery workers, Redis, virtual phones running the agent) turns into
the dashboard's heatmap, participation and bias; and the lab's scenario options work through
`manage.py virtual_lab` as a process (hold, SIGUSR1, getprop fedfleet.availability)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from devices import adb
from devices.adb_identity import AdbIdentity, load_or_create_identity
from tests.conftest import ManagedProcess, VirtualLab, make_user, wait_until
from tests.training.test_engine_integration import launch, register, wait_for_job
from tests.virtual.conftest import free_base_port
from training.analysis import availability as availability_report
from training.models import JobStatus

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_job_records_availability_that_the_dashboard_draws(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab]
) -> None:
    devices = register(virtual_phones(4, seed=51), "avail")
    # goal 2 of 4 phones, over-selection ×1.3 → 3 selected per round: 2 reported, 1 late, 1 idle
    job = wait_for_job(
        launch(
            "avail", rounds=2, clients_per_round=2, min_clients=2, partition="dirichlet", partition_param=0.5
        ),
        (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED),
    )
    assert job.status == JobStatus.COMPLETED, job.error

    report = availability_report.job_report(job)
    assert report.rounds == [1, 2]
    assert [p.label for p in report.phones] == [d.name for d in devices]
    for column in range(2):
        states = sorted(row[column] for row in report.cells)
        assert states.count("reported") == 2 and states.count("idle") == 1, states
        assert set(states) <= {"reported", "idle", "late", "selected"}
    assert sum(row.times_reported for row in report.participation) == 4
    assert sum(row.data_share for row in report.participation) == pytest.approx(1.0)
    assert len(report.bias) == 2 and all(b.tv is not None and 0 <= b.tv <= 1 for b in report.bias)

    client = Client()
    client.force_login(make_user("avail-viewer", None))
    data = client.get(reverse("training:job-snapshot", args=[job.pk])).json()
    assert data["figures"]["availability_heatmap"]["data"][0]["x"] == [1, 2]
    assert data["availability"]["rounds"] == 2


def read_until(process: subprocess.Popen[str], marker: str) -> None:
    """Read the lab's output (log lines included) up to a line that is exactly `marker`."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # blocks until the lab prints; EOF if it died
        if line.strip() == marker:
            return
        seen.append(line.strip())
    raise AssertionError(f"no {marker!r} before EOF: {seen}")


@pytest.mark.integration
def test_virtual_lab_command_runs_a_held_alternating_scenario(tmp_path: Path) -> None:
    identity: AdbIdentity = load_or_create_identity(tmp_path / "id" / "adbkey")
    keys = tmp_path / "adb_keys"
    keys.write_text(identity.public_key + "\n")
    base = free_base_port(2)
    argv = [sys.executable, "manage.py", "virtual_lab", "--phones", "2", "--base-port", str(base),
            "--keys", str(keys), "--lab-dir", str(tmp_path / "lab"), "--no-zygote",
            "--scenario", "alternating", "--period-s", "3600", "--groups", "2", "--hold-online"]  # fmt: skip
    env = dict(os.environ, FEDFLEET_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == "READY":
                break
        assert lines[-1] == "READY", lines
        second = adb.Target("tcp", f"127.0.0.1:{base + 1}")
        with adb.connect(second, identity=identity, timeout_s=20) as phone:  # held online
            assert phone.run("getprop fedfleet.availability") == "alternating: group 2 of 2, period 3600 s\n"
        process.send_signal(signal.SIGUSR1)
        read_until(process, "SCENARIO STARTED")

        def answers(target: adb.Target) -> bool:
            try:
                with adb.connect(target, identity=identity, timeout_s=2):
                    return True
            except adb.AdbError:
                return False

        wait_until(lambda: not answers(second), timeout_s=20, what="group 2 to go offline")
        process.send_signal(signal.SIGUSR2)  # next turn on demand: group 2 back, group 1 gone
        read_until(process, "SCENARIO ADVANCED")
        wait_until(lambda: answers(second), timeout_s=20, what="group 2 to come back")
        process.send_signal(signal.SIGUSR2)
        read_until(process, "SCENARIO ADVANCED")  # printed when the turn is asked for, not yet applied
        first = adb.Target("tcp", f"127.0.0.1:{base}")
        wait_until(lambda: answers(first), timeout_s=20, what="group 1 to come back")
        with adb.connect(first, identity=identity, timeout_s=20) as phone:
            assert phone.run("getprop fedfleet.availability").startswith("alternating: group 1 of 2")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
