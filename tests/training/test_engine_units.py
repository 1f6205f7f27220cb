"""The round engine's decisions on recorded rows (no workers): what closes a round, which phones are
stragglers, and that a crash in preparation, selection or aggregation is recorded, never left spinning."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from devices.models import DeviceStatus
from tests.training.broker import record_sends
from tests.training.web_factories import add_client, make_device, make_job, make_round, operator  # noqa: F401
from training.engine import closing, prepare, rounds, watchdog
from training.jobs import storage
from training.models import ClientResult, ClientState, Job, JobStatus, Participant, Round, RoundStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple]]:
    """Record what the engine would enqueue (unit tests have no broker)."""
    return record_sends(monkeypatch, ("start_job", "start_round", "close_round", "run_client"))


def _round_with(states: list[str], *, goal: int, job: Any) -> Any:
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    rnd.goal = goal
    rnd.deadline_at = timezone.now() + timedelta(minutes=5)
    rnd.save(update_fields=["goal", "deadline_at"])
    for index, state in enumerate(states):
        add_client(rnd, make_device(f"p{index}"), state=state)
    return rnd


@pytest.mark.parametrize(
    ("states", "goal", "ready"),
    [
        (["reported", "reported", "training"], 2, True),  # goal reached
        (["reported", "training", "training"], 2, False),  # still waiting
        (["reported", "failed", "late"], 3, True),  # nobody left in flight
        (["pushing", "selected", "pulling"], 1, False),
    ],
)
def test_round_ready_to_close(operator: Any, states: list[str], goal: int, ready: bool) -> None:  # noqa: F811
    rnd = _round_with(states, goal=goal, job=make_job(operator))
    assert closing.round_ready_to_close(rnd) is ready


def test_stragglers_are_marked_late_with_the_reason(operator: Any) -> None:  # noqa: F811
    rnd = _round_with(["reported", "reported", "reported", "training"], goal=2, job=make_job(operator))
    closing._mark_stragglers(rnd)
    states = sorted(rnd.client_results.values_list("state", "reason"))
    assert [s for s, _ in states].count(ClientState.REPORTED) == 2
    late = [r for s, r in states if s == ClientState.LATE]
    assert sorted(late) == ["goal reached before it reported", "reported after the goal count was reached"]


def test_aggregation_crash_abandons_the_round_with_the_reason(
    operator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    no_broker: list,
) -> None:
    rnd = _round_with(["reported"], goal=1, job=make_job(operator))
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.AGGREGATING)
    rnd.refresh_from_db()

    def boom(_rnd: Any) -> None:
        raise ValueError("tensors do not line up")

    monkeypatch.setattr(closing, "_aggregate_round", boom)
    closing._aggregate(rnd)
    rnd.refresh_from_db()
    assert rnd.status == RoundStatus.ABANDONED
    assert rnd.reason == "aggregation failed: ValueError: tensors do not line up"
    assert ("start_round", (rnd.job_id,)) in no_broker  # retried as a new attempt


def test_preparation_crash_fails_the_job(operator: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    job = make_job(operator, status=JobStatus.QUEUED)
    monkeypatch.setattr(prepare, "_prepare_job", lambda job_id: 1 / 0)
    prepare.prepare_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "ZeroDivisionError" in job.error


def test_selection_crash_pauses_the_job_and_frees_its_phones(
    operator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = make_job(operator)
    phone = make_device("leased", status=DeviceStatus.BUSY, lease_job_id=job.pk)
    monkeypatch.setattr(storage, "load_checkpoint", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    Participant.objects.create(job=job, device=phone, client_index=0, num_samples=10, shard_sha256="0" * 64)
    rounds.start_round(job.pk)
    job.refresh_from_db()
    phone.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert phone.lease_job_id is None
    assert "disk gone" in job.log_entries.first().message


def test_watchdog_redrives_rounds_past_their_deadline(operator: Any, no_broker: list) -> None:  # noqa: F811
    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() - timedelta(minutes=5))
    idle = make_job(operator, name="no round yet")
    watchdog.watchdog()
    assert ("close_round", (rnd.pk,)) in no_broker
    assert ("start_round", (idle.pk,)) in no_broker


def test_training_pool_processes_import_the_data_set_libraries_when_they_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.signals import worker_process_init

    from training.engine import tasks

    imported: list[str] = []
    monkeypatch.setattr(tasks.importlib, "import_module", imported.append)
    responses = worker_process_init.send(sender=None)
    assert tasks.warm_up_pool_process in [receiver for receiver, _ in responses]
    assert imported == list(tasks.POOL_WARM_IMPORTS)


@pytest.mark.django_db
def test_a_finished_job_clears_its_files_from_each_of_its_phones(
    operator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from training.engine import tasks
    from training.jobs import services

    job = make_job(operator)
    phones = [make_device("clean-a"), make_device("clean-b", worker_queue="devices.lab-2")]
    for index, phone in enumerate(phones):
        Participant.objects.create(job=job, device=phone, client_index=index, num_samples=5, shard_sha256="0")
    sent: list[tuple[tuple[int, int], str]] = []
    monkeypatch.setattr(
        tasks.clean_phone, "apply_async", lambda args, queue: sent.append((tuple(args), queue))
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.complete_job(job)
    assert sorted(sent) == [((job.pk, phones[0].pk), "devices"), ((job.pk, phones[1].pk), "devices.lab-2")]


@pytest.mark.django_db
def test_a_phone_that_does_not_answer_keeps_the_files_and_the_job_log_says_so(operator: Any) -> None:  # noqa: F811
    from training.engine import client as client_runner

    job = make_job(operator, status=JobStatus.COMPLETED)
    phone = make_device("gone-phone")  # nothing listens on its port
    assert client_runner.clean_phone(job.pk, phone.pk) is False
    entry = job.log_entries.get()
    assert "could not remove the job's files from gone-phone" in entry.message


@pytest.mark.django_db
def test_a_phone_that_worked_through_its_jobs_cancellation_is_cleaned_again_after(
    operator: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.engine import client as client_runner

    job = make_job(operator)
    phone = make_device("racing-phone")
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, phone, ClientState.TRAINING)

    def cancelled_meanwhile(_: Any) -> None:  # the cancel (and its cleanup) lands while the phone works
        Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)

    cleaned: list[tuple[int, int]] = []
    monkeypatch.setattr(client_runner, "_run", cancelled_meanwhile)
    monkeypatch.setattr(
        client_runner, "clean_phone", lambda job_id, device_id: cleaned.append((job_id, device_id))
    )
    client_runner.run_client(result.pk)
    assert cleaned == [(job.pk, phone.pk)]

    cleaned.clear()  # a phone whose job goes on is left alone
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    ClientResult.objects.filter(pk=result.pk).update(state=ClientState.TRAINING)
    monkeypatch.setattr(client_runner, "_run", lambda _: None)
    client_runner.run_client(result.pk)
    assert cleaned == []
