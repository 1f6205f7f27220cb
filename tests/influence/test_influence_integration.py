"""Client influence end to end through the real parts: Celery workers (subprocesses), Redis, virtual phones
over the ADB wire protocol, one of them flipping labels without the platform being told. The analysis
runs in the training worker after every committed round; the flipper must rank lowest."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices import tasks as device_tasks
from devices.models import DeviceStatus
from devices.services import register_or_update_device
from tests.conftest import (
    ManagedProcess,
    _wait_for_log,
    free_port_range,
    make_user,
    start_process,
    wait_until,
)
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientInfluence, JobStatus, RoundAnalysis

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PHONES = 4
ROUNDS = 3
TIMEOUT_S = 240.0


@pytest.fixture
def misbehaving_lab(tmp_path: Path, _isolated_services: Path) -> Iterator[tuple[ManagedProcess, Path]]:
    """`python -m devices.virtual --phones 4 --misbehave 1 --behaviour label_flip` trusting the platform."""
    from devices.adb_identity import platform_identity  # noqa: PLC0415

    keys = tmp_path / "adb_keys"
    keys.write_text(platform_identity().public_key + "\n")
    lab_dir = tmp_path / "phones"
    argv = [
        sys.executable, "-m", "devices.virtual", "--phones", str(PHONES), "--base-port",
        str(free_port_range(PHONES)), "--keys", str(keys), "--seed", "5", "--lab-dir", str(lab_dir),
        "--misbehave", "1", "--behaviour", "label_flip",
    ]  # fmt: skip
    env = dict(os.environ, FEDFLEET_DATA_DIR=str(_isolated_services), PYTHONUNBUFFERED="1")
    lab = start_process("lab-misbehave", argv, env, tmp_path)
    _wait_for_log(lab, "READY")
    yield lab, lab_dir
    lab.stop()


def test_a_label_flipping_phone_ranks_lowest(
    celery_worker: dict[str, ManagedProcess], misbehaving_lab: tuple[ManagedProcess, Path]
) -> None:
    lab, lab_dir = misbehaving_lab
    devices = {}
    for line in lab.log().splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and ":" in parts[1]:
            device = register_or_update_device(
                name=f"flip-{parts[0]}", transport="tcp", address=parts[1], tags=["virtual", "flipit"]
            )
            assert device_tasks.probe_device(device.pk) == DeviceStatus.ONLINE
            devices[parts[0]] = device
    assert len(devices) == PHONES
    (flipper_serial,) = json.loads((lab_dir / "misbehaving.json").read_text())  # the operator's record
    flipper = devices[flipper_serial]

    owner = make_user("owner-flipit", None)
    config: dict[str, Any] = {
        "name": "it-influence",
        "model": "logreg",
        "rounds": ROUNDS,
        "clients_per_round": PHONES,
        "min_clients": PHONES - 1,
        "local_epochs": 1,
        "round_deadline_s": 60,
        "device_tags": ["flipit"],
        "influence": "on",
    }
    job = create_job(owner, parse_job_config(config))

    def analysed() -> bool:
        job.refresh_from_db()
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED):
            raise AssertionError(f"job {job.status}: {job.error}")
        return job.status == JobStatus.COMPLETED and RoundAnalysis.objects.filter(job=job).count() == ROUNDS

    wait_until(analysed, timeout_s=TIMEOUT_S, interval_s=0.2, what="the job and its influence analysis")

    analyses = list(RoundAnalysis.objects.filter(job=job).order_by("round_number"))
    assert [a.round_number for a in analyses] == list(range(1, ROUNDS + 1))
    assert all(a.influence and a.seconds > 0 for a in analyses) and analyses[-1].fisher_products > 0
    for number in range(1, ROUNDS + 1):  # a row per phone whose update entered, every round
        reported = set(
            job.client_results.filter(round__number=number, state="reported").values_list(
                "device_id", flat=True
            )
        )
        rows = ClientInfluence.objects.filter(job=job, round_number=number)
        assert reported <= set(rows.values_list("device_id", flat=True))
    last = {r.device_id: r.loss for r in ClientInfluence.objects.filter(job=job, round_number=ROUNDS)}
    assert min(last, key=lambda d: last[d]) == flipper.pk, last
    assert last[flipper.pk] < 0
