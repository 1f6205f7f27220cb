"""Phone-resident data through the real parts (workers, Redis, virtual phones over ADB): phones seeded by
the virtual lab with their own files train a job without a shard leaving the server, and reach the
accuracy of the same data pushed as shards; a phone without data fails with the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from devices.models import Device
from tests.conftest import ManagedProcess, VirtualLab, make_user
from tests.training.test_engine_integration import register, wait_for_job
from training.engine.phone_data import write_seed_files
from training.fl.datasets import load_digits
from training.fl.partition import partition_dataset
from training.jobs import storage
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientResult, ClientState, Job, JobStatus, Participant

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PHONES = 4


def job(tag: str, name: str, **extra: object) -> Job:
    owner = make_user(f"owner-{name}", None)
    config = {
        "name": name,
        "rounds": 4,
        "clients_per_round": PHONES,
        "over_selection": 1.0,
        "min_clients": PHONES,
        "local_epochs": 2,
        "round_deadline_s": 60,
        "device_tags": [tag],
        **extra,
    }
    return wait_for_job(create_job(owner, parse_job_config(config)), (JobStatus.COMPLETED, JobStatus.FAILED))


def test_phone_resident_job_pushes_no_sample_and_matches_pushed_shards(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab], tmp_path: Path
) -> None:
    train = load_digits(seed=0).train
    parts = partition_dataset("iid", train, PHONES, seed=1)
    sizes = write_seed_files(train.x.numpy(), train.y.numpy(), parts, tmp_path / "seed")
    lab = virtual_phones(PHONES, seed=171, extra=["--seed-data", str(tmp_path / "seed")])
    register(lab, "own")

    # The same data pushed as shards first (the agent reaches the phones in that job's first round).
    pushed = job("own", "pushed", partition="iid")
    assert pushed.status == JobStatus.COMPLETED, pushed.error
    assert all(p.shard_sha256 for p in Participant.objects.filter(job=pushed))

    resident = job("own", "resident", data_on_phone=True, phone_data_report=True)
    assert resident.status == JobStatus.COMPLETED, resident.error
    results = list(ClientResult.objects.filter(job=resident))
    assert len(results) == 4 * PHONES and all(r.state == ClientState.REPORTED for r in results)
    # No sample left the server: every byte sent to a phone was the round's model and config, the
    # server wrote no shard, and the phones' own files are what they trained on.
    for r in results:
        assert r.bytes_down == int(r.metrics["payload_bytes_down"]), r.metrics
    assert not (storage.job_dir(resident.pk) / "shards").exists()
    recorded = {p.device_id: p for p in Participant.objects.filter(job=resident)}
    assert sorted(p.num_samples for p in recorded.values()) == sorted(sizes)
    for p in recorded.values():
        assert sum(p.label_counts) == p.num_samples and "train.npz" in p.data_source
    # The pushed job's first round sent each phone its shard on top of the model.
    first = ClientResult.objects.filter(job=pushed, round__number=1)
    assert all(r.bytes_down > int(r.metrics["payload_bytes_down"]) for r in first)

    assert resident.last_accuracy is not None and pushed.last_accuracy is not None
    assert resident.last_accuracy > 0.85
    assert abs(resident.last_accuracy - pushed.last_accuracy) < 0.03, (
        resident.last_accuracy,
        pushed.last_accuracy,
    )

    # The dashboard says which data each phone used.
    snapshot_sources = {p["data_source"] for p in _snapshot(resident)["participants"]}
    assert all("its own train.npz on the phone" in s for s in snapshot_sources)


def _snapshot(job_row: Job) -> dict:
    from training.jobs.services import job_snapshot  # noqa: PLC0415

    return job_snapshot(job_row)


def test_phones_without_usable_data_fail_with_the_reason_and_counts_stay_withheld(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab], tmp_path: Path
) -> None:
    train = load_digits(seed=0).train
    parts = partition_dataset("iid", train, 2, seed=3)
    write_seed_files(train.x.numpy(), train.y.numpy(), parts, tmp_path / "seed", fmt="csv")
    (tmp_path / "seed" / "phone-0002" / "data").mkdir(parents=True)
    (tmp_path / "seed" / "phone-0002" / "data" / "train.csv").write_text("f0,label\nnan,1\n0.5,0\n")
    devices = register(virtual_phones(4, seed=172, extra=["--seed-data", str(tmp_path / "seed")]), "bare")
    # Two of them run the resident agent (agent serve over ADB's tcp: stream): its runtime skips the shard
    # too, and serve reads the phone's own file.
    Device.objects.filter(name__in=["bare-1", "bare-3"]).update(runtime="resident")
    owner = make_user("owner-bare", None)
    config = parse_job_config(
        {
            "name": "bare",
            "rounds": 2,
            "clients_per_round": 4,
            "over_selection": 1.0,
            "min_clients": 2,
            "local_epochs": 1,
            "round_deadline_s": 60,
            "device_tags": ["bare"],
            "data_on_phone": True,
        }
    )
    finished = wait_for_job(create_job(owner, config), (JobStatus.COMPLETED, JobStatus.FAILED))
    assert finished.status == JobStatus.COMPLETED, finished.error
    by_phone = {d.pk: list(ClientResult.objects.filter(job=finished, device=d)) for d in devices}
    reasons = {
        d.name: {r.state: r.reason for r in by_phone[d.pk]} for d in devices if d.name in ("bare-2", "bare-3")
    }
    assert "non-finite" in reasons["bare-2"][ClientState.FAILED], reasons
    assert "no usable data on this phone" in reasons["bare-3"][ClientState.FAILED], reasons
    assert "neither train.npz nor train.csv" in reasons["bare-3"][ClientState.FAILED]
    # Counts withheld: every update weighs 1, the server records nothing of the phones' data.
    for p in Participant.objects.filter(job=finished):
        assert p.num_samples == 1 and p.label_counts == [] and "withheld" in p.data_source
    reported = ClientResult.objects.filter(job=finished, state=ClientState.REPORTED)
    assert reported.count() == 4 and all("steps" not in r.metrics for r in reported)
    assert {r.device.name for r in reported} == {"bare-0", "bare-1"}
    assert all(r.bytes_down == int(r.metrics["payload_bytes_down"]) for r in reported if r.round.number == 2)
    assert np.isfinite(finished.last_accuracy or float("nan"))
    # The dashboard's snapshot (figures, availability against data shares) copes with unknown counts.
    from training.web.views import snapshot_with_figures  # noqa: PLC0415

    snapshot = snapshot_with_figures(finished)
    assert all(p["samples_known"] is False for p in snapshot["participants"])
    assert snapshot["onnx"] is None or "url" in snapshot["onnx"]
