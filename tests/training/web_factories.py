"""Rows for the training web-layer tests, created directly (the engine need not run)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts.roles import OPERATORS, VIEWERS, ensure_role_groups
from devices.models import Device, DeviceStatus, Tag
from training.jobs.config import DEFAULTS
from training.models import ClientResult, Job, JobLogEntry, Round

_ports = itertools.count(41000)


def make_user(username: str, group: str | None) -> Any:
    user = get_user_model().objects.create_user(username=username)  # no password: tests use force_login
    if group is not None:
        ensure_role_groups()  # idempotent; a transactional test's flush may have removed the groups
        user.groups.add(Group.objects.get(name=group))
    return user


def make_device(
    name: str, *, status: str = DeviceStatus.ONLINE, tags: tuple[str, ...] = (), **fields: Any
) -> Device:
    device = Device.objects.create(name=name, address=f"127.0.0.1:{next(_ports)}", status=status, **fields)
    for tag in tags:
        device.tags.add(Tag.objects.get_or_create(name=tag)[0])
    return device


def make_job(owner: Any, *, name: str = "digits-fedavg", status: str = "running", **config: Any) -> Job:
    full = {**DEFAULTS.to_dict(), "name": name, **config}
    return Job.objects.create(
        name=name,
        owner=owner,
        status=status,
        config=full,
        algorithm=full["algorithm"],
        dataset=full["dataset"],
        model_name=full["model"],
        rounds_total=full["rounds"],
        clients_per_round=full["clients_per_round"],
    )


def make_round(
    job: Job,
    number: int,
    *,
    status: str = "committed",
    accuracy: float | None = None,
    loss: float | None = None,
    attempt: int = 1,
    **fields: Any,
) -> Round:
    rnd = Round.objects.create(
        job=job,
        number=number,
        attempt=attempt,
        status=status,
        goal=job.clients_per_round,
        min_reports=1,
        deadline_at=timezone.now(),
        accuracy=accuracy,
        loss=loss,
        **fields,
    )
    if status == "committed":
        Job.objects.filter(pk=job.pk, committed_rounds__lt=number).update(
            committed_rounds=number, last_accuracy=accuracy, last_loss=loss
        )
        job.refresh_from_db()
    return rnd


def add_client(rnd: Round, device: Device, state: str = "reported", **fields: Any) -> ClientResult:
    return ClientResult.objects.create(job=rnd.job, round=rnd, device=device, state=state, **fields)


def add_log(job: Job, message: str, **fields: Any) -> JobLogEntry:
    return JobLogEntry.objects.create(job=job, message=message, **fields)


@pytest.fixture
def operator(db: None) -> Any:
    return make_user("olivia", OPERATORS)


@pytest.fixture
def viewer(db: None) -> Any:
    return make_user("victor", VIEWERS)


@pytest.fixture
def queued_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record start_job instead of queueing it on Celery (there is no broker in unit tests)."""
    from training.engine import tasks  # noqa: PLC0415

    started: list[int] = []
    monkeypatch.setattr(tasks.start_job, "delay_on_commit", lambda job_id: started.append(job_id))
    return started
