"""Issue 12 on recorded rows (no workers): run claims, the watchdog's ways forward, leases of phones still
running, weights from the server's record, hostile phone output, and who may change a job."""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from django.test import Client
from django.utils import timezone

from accounts.roles import OPERATORS
from devices.models import Device, DeviceStatus
from tests.training.broker import record_sends
from tests.training.web_factories import add_client, make_device, make_job, make_round, make_user, operator  # noqa: F401
from training.engine import client, closing, watchdog
from training.engine.runtimes.agent_output import PhoneJsonError, parse_agent_output, phone_json
from training.fl.wire import InvalidUpdate, dumps_tensors, loads_tensors
from training.jobs import leases
from training.models import ClientResult, ClientState, Job, JobStatus, Participant, Round, RoundStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple]]:
    """Record what would be queued (unit tests have no broker)."""
    return record_sends(
        monkeypatch, ("start_job", "start_round", "close_round", "run_client", "cancel_client")
    )


def _leased(phone: Device, job: Job) -> None:
    assert leases.lease_devices([phone.pk], job.pk) == [phone.pk]


def _long_ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


# --- exactly one run per phone per round -----------------------------------------------------------------
def test_a_live_run_keeps_its_claim_and_a_dead_one_is_taken_over(operator: Any) -> None:  # noqa: F811
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, make_device("claimed"), ClientState.TRAINING)
    first = client.claim_run(result.pk)
    assert first is not None
    assert client.claim_run(result.pk) is None  # a redelivered task: the live run is left alone
    ClientResult.objects.filter(pk=result.pk).update(runner_seen_at=_long_ago(leases.RUN_STALE_AFTER_S + 1))
    second = client.claim_run(result.pk)  # the first owner stopped beating: its worker died
    assert second not in (None, first)
    ClientResult.objects.filter(pk=result.pk).update(state=ClientState.REPORTED, runner="")
    assert client.claim_run(result.pk) is None  # nothing to run once the result left flight


def test_a_redelivered_run_client_leaves_a_live_run_alone(operator: Any, monkeypatch: Any) -> None:  # noqa: F811
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    result = add_client(rnd, make_device("busy-phone"), ClientState.TRAINING)
    assert client.claim_run(result.pk) is not None  # the first delivery is still streaming
    ran: list[int] = []
    monkeypatch.setattr(client, "_run", lambda r: ran.append(r.pk))
    client.run_client(result.pk)
    assert ran == []


def test_a_claimed_run_is_released_when_it_ends(operator: Any, monkeypatch: Any) -> None:  # noqa: F811
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    result = add_client(rnd, make_device("ends"), ClientState.SELECTED)
    seen: list[str] = []
    monkeypatch.setattr(client, "_run", lambda r: seen.append(ClientResult.objects.get(pk=r.pk).runner))
    client.run_client(result.pk)
    assert len(seen) == 1 and len(seen[0]) == 32  # it held the claim while it ran
    assert ClientResult.objects.get(pk=result.pk).runner == ""


# --- closing keeps phones still running leased, and stops them -------------------------------------------
def test_closing_releases_idle_phones_and_stops_the_ones_still_running(
    operator: Any,  # noqa: F811
    sent: list,
    django_capture_on_commit_callbacks: Any,
) -> None:
    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    done, late = make_device("done-phone"), make_device("late-phone")
    for phone in (done, late):
        _leased(phone, job)
    add_client(rnd, done, ClientState.REPORTED)
    running = add_client(rnd, late, ClientState.LATE)
    ClientResult.objects.filter(pk=running.pk).update(runner="a" * 32, runner_seen_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        closing.stop_and_release(job.pk, list(rnd.client_results.select_related("device")))
    done.refresh_from_db()
    late.refresh_from_db()
    assert done.lease_job_id is None and done.status == DeviceStatus.ONLINE
    assert late.lease_job_id == job.pk and late.status == DeviceStatus.BUSY  # no second agent beside it
    assert ("cancel_client", (running.pk,)) in sent
    # Its run ends: then, with its round closed, the phone goes back to the pool.
    ClientResult.objects.filter(pk=running.pk).update(runner="")
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.COMMITTED)
    client._release_if_round_closed(ClientResult.objects.get(pk=running.pk))
    late.refresh_from_db()
    assert late.lease_job_id is None and late.status == DeviceStatus.ONLINE


def test_selection_never_picks_a_phone_with_a_live_run(operator: Any) -> None:  # noqa: F811
    from training.engine.selection import eligible_devices  # noqa: PLC0415
    from training.jobs.config import parse_job_config  # noqa: PLC0415

    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.COMMITTED)
    phone, other = make_device("still-running"), make_device("free")
    result = add_client(rnd, phone, ClientState.LATE)
    config = parse_job_config(job.config)
    assert {d.pk for d in eligible_devices(config)} == {phone.pk, other.pk}
    ClientResult.objects.filter(pk=result.pk).update(runner="b" * 32, runner_seen_at=timezone.now())
    assert {d.pk for d in eligible_devices(config)} == {other.pk}


# --- the watchdog: a way forward from every state a lost task leaves -------------------------------------
def test_watchdog_resends_runs_no_worker_holds(operator: Any, sent: list) -> None:  # noqa: F811
    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    lost = add_client(rnd, make_device("lost"), ClientState.TRAINING)
    add_client(rnd, make_device("queued"), ClientState.SELECTED)  # just sent: give it time
    alive = add_client(rnd, make_device("alive"), ClientState.TRAINING)
    dead = add_client(rnd, make_device("dead-owner"), ClientState.PUSHING)
    old = _long_ago(watchdog.REDISPATCH_AFTER_S + 5)
    ClientResult.objects.filter(pk__in=[lost.pk, alive.pk, dead.pk]).update(dispatched_at=old)
    ClientResult.objects.filter(pk=alive.pk).update(runner="c" * 32, runner_seen_at=timezone.now())
    ClientResult.objects.filter(pk=dead.pk).update(
        runner="d" * 32, runner_seen_at=_long_ago(leases.RUN_STALE_AFTER_S + 5)
    )
    watchdog.watchdog()
    resent = {args[0] for name, args in sent if name == "run_client"}
    assert resent == {lost.pk, dead.pk}
    sent.clear()
    watchdog.watchdog()  # re-sent just now: not again on the next tick
    assert not [s for s in sent if s[0] == "run_client"]
    assert "re-sent 2 phone run(s)" in job.log_entries.filter(level="warning").first().message


def test_watchdog_finishes_a_stale_aggregation_and_closes_a_paused_jobs_round(
    operator: Any,  # noqa: F811
    sent: list,
) -> None:
    running = make_job(operator)
    stale = make_round(running, 1, status=RoundStatus.AGGREGATING)
    Round.objects.filter(pk=stale.pk).update(closed_at=_long_ago(watchdog.AGGREGATION_STALE_S + 5))
    busy = make_job(operator, name="aggregating now")
    fresh = make_round(busy, 1, status=RoundStatus.AGGREGATING)
    Round.objects.filter(pk=fresh.pk).update(closed_at=timezone.now())
    paused = make_job(operator, name="paused", status=JobStatus.PAUSED)
    overdue = make_round(paused, 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=overdue.pk).update(deadline_at=_long_ago(watchdog.DEADLINE_GRACE_S + 5))
    watchdog.watchdog()
    closed = {args[0] for name, args in sent if name == "close_round"}
    assert closed == {stale.pk, overdue.pk}
    assert not [s for s in sent if s[0] == "start_round" and s[1] == (paused.pk,)]


def test_watchdog_starts_a_round_only_for_a_job_nobody_drives(operator: Any, sent: list) -> None:  # noqa: F811
    from tests.training.web_factories import add_log  # noqa: PLC0415

    driven = make_job(operator, name="waiting for phones")
    add_log(driven, "round 3: waiting for phones")  # the engine's own retry loop is alive
    forgotten = make_job(operator, name="forgotten")
    entry = add_log(forgotten, "round 2 committed")
    type(entry).objects.filter(pk=entry.pk).update(at=_long_ago(watchdog.IDLE_JOB_AFTER_S + 5))
    watchdog.watchdog()
    started = {args[0] for name, args in sent if name == "start_round"}
    assert started == {forgotten.pk}


def test_watchdog_releases_phones_leased_with_no_run_on_them(operator: Any) -> None:  # noqa: F811
    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    stranded, working, young = make_device("stranded"), make_device("working"), make_device("just-leased")
    for phone in (stranded, working, young):
        _leased(phone, job)
    add_client(rnd, working, ClientState.TRAINING)
    Device.objects.filter(pk__in=[stranded.pk, working.pk]).update(
        status_changed_at=_long_ago(watchdog.LEASE_GRACE_S + 5)
    )
    watchdog.release_stranded_leases()
    states = {d.name: (d.status, d.lease_job_id) for d in Device.objects.all()}
    assert states["stranded"] == (DeviceStatus.ONLINE, None)
    assert states["working"] == (DeviceStatus.BUSY, job.pk)
    assert states["just-leased"] == (DeviceStatus.BUSY, job.pk)  # start_round writes its result next


# --- trust nothing a phone says that the server knows better ---------------------------------------------
def _round_files(tmp_path: Path, samples: Any) -> Path:
    (tmp_path / "update.safetensors").write_bytes(dumps_tensors({"w": torch.zeros(2)}))
    (tmp_path / "result.json").write_text(json.dumps({"samples": samples, "loss": 0.5}))
    return tmp_path


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        (10**9, "claims 1000000000 samples, but this phone's shard holds 70"),
        (69, "claims 69 samples, but this phone's shard holds 70"),
        (True, "reports True samples"),
        ("70", "reports '70' samples"),
    ],
)
def test_an_update_whose_sample_count_differs_from_the_shard_is_rejected(
    operator: Any,  # noqa: F811
    tmp_path: Path,
    samples: Any,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, make_device("boaster"), ClientState.PULLING)
    monkeypatch.setattr(client.uploads, "upload_errors", lambda *a: [])  # the tensors are fine here
    client._accept(result, 70, _round_files(tmp_path, samples), limit=10**6, pull_s=0.1)
    result.refresh_from_db()
    assert result.state == ClientState.REJECTED
    assert reason in result.reason


@pytest.mark.parametrize(("samples", "state"), [(55, ClientState.REPORTED), (71, ClientState.REJECTED)])
def test_a_submodel_client_may_claim_fewer_samples_than_its_shard_never_more(
    operator: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    samples: int,
    state: str,
) -> None:
    """FedSubAvg clients train on the samples their randomized request covers (the server cannot know
    which): fewer than the shard is their truth, more is a lie."""
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, make_device("submodel-phone"), ClientState.PULLING)
    monkeypatch.setattr(client.uploads, "upload_errors", lambda *a: [])
    monkeypatch.setattr(client.uploads, "job_needs_request", lambda job: True)
    client._accept(result, 70, _round_files(tmp_path, samples), limit=10**6, pull_s=0.1)
    result.refresh_from_db()
    assert result.state == state
    if state == ClientState.REPORTED:
        assert result.num_samples == 55


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"event": "progress", "loss": ' + "9" * 400 + "}", "a number of 400 digits"),
        ("[" * 5000 + "]" * 5000, "nested 5000 levels deep"),
        ('{"loss": NaN}', "NaN is not a number"),
        ('{"loss": 1e999999}', "not a finite number"),
        ("x" * 70_000, "over the 65536-character limit"),
    ],
)
def test_hostile_phone_json_is_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(PhoneJsonError, match=why):
        phone_json(text)


def test_hostile_progress_lines_never_crash_the_parser() -> None:
    progress: list[dict[str, Any]] = []
    lines = [
        '{"event": "progress", "step": ' + "9" * 400 + "}",
        '{"event": "progress", "loss": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"event": "progress", "step": 3, "loss": 0.25}',
        '{"event": "done", "samples": 70}',
        "FEDFLEET_EXIT=0",
    ]
    run = parse_agent_output(lines, progress.append)
    assert progress == [{"event": "progress", "step": 3, "loss": 0.25}]
    assert run.exit_code == 0 and run.done == {"event": "done", "samples": 70}
    assert len(run.tail) == 2  # the refused lines are kept only as the failure's last words


def test_progress_relay_survives_numbers_no_float_holds(operator: Any) -> None:  # noqa: F811
    rnd = make_round(make_job(operator), 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, make_device("relay"), ClientState.TRAINING)
    relay = client.ProgressRelay(ClientResult.objects.select_related("round").get(pk=result.pk))
    relay({"epoch": 10**400, "step": 2, "steps": 10**400, "loss": float("nan")})  # no OverflowError
    result.refresh_from_db()
    assert result.step == 2 and result.epoch is None and result.loss is None


def _tensor_file(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_tensor_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": []}}, b"\0" * 4), "data_offsets"),
        (struct.pack("<Q", 10_005) + b'{"a":' + b"[" * 5000 + b"]" * 5000, "not JSON"),
        (_tensor_file({"w": {"dtype": "F32", "shape": [10**30], "data_offsets": [0, 4]}}, b"\0" * 4), "hold"),
        (_tensor_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover"),
    ],
)
def test_hostile_tensor_headers_are_rejected_not_crashed_on(data: bytes, why: str) -> None:
    with pytest.raises(InvalidUpdate, match=why):
        loads_tensors(data, max_bytes=10**6)


# --- access: a job's owner and staff change it, other operators watch ------------------------------------
def test_other_operators_see_a_job_read_only_and_cannot_change_it(operator: Any) -> None:  # noqa: F811
    job = make_job(operator, status=JobStatus.RUNNING)
    phone = make_device("theirs")
    Participant.objects.create(job=job, device=phone, client_index=0, num_samples=5, shard_sha256="0")
    other = Client()
    other.force_login(make_user("mallory", OPERATORS))
    for action in ("pause", "cancel"):
        response = other.post(f"/jobs/{job.pk}/{action}/")
        assert response.status_code == 403
        assert "only the job's owner or staff" in response.content.decode()
        api = other.post(f"/api/jobs/{job.pk}/{action}/")
        assert api.status_code == 403 and "only the job's owner or staff" in api.json()["detail"]
    assert other.post(f"/jobs/{job.pk}/phones/{phone.pk}/exclude/").status_code == 403
    assert other.post(f"/jobs/{job.pk}/exact-loo/").status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and not job.participants.get().excluded
    page = other.get(f"/jobs/{job.pk}/").content.decode()
    assert f"Read-only: job #{job.pk} belongs to" in page
    assert 'data-action="pause"' not in page


def test_staff_may_change_any_job(operator: Any) -> None:  # noqa: F811
    job = make_job(operator, status=JobStatus.RUNNING)
    staff = make_user("stella", OPERATORS)
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    browser = Client()
    browser.force_login(staff)
    assert browser.post(f"/jobs/{job.pk}/pause/").status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED


def test_a_phone_whose_run_died_is_released_as_soon_as_its_round_closed(operator: Any) -> None:  # noqa: F811
    """A devices worker killed mid-round: at the deadline the round is abandoned while its phones' runs
    still look alive; once they are stale the watchdog frees the phones without waiting out the grace."""
    job = make_job(operator)
    phone = make_device("orphaned")
    _leased(phone, job)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    result = add_client(rnd, phone, ClientState.TRAINING)
    ClientResult.objects.filter(pk=result.pk).update(runner="e" * 32, runner_seen_at=timezone.now())
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.ABANDONED)
    closing.stop_and_release(job.pk, [ClientResult.objects.select_related("device").get(pk=result.pk)])
    assert Device.objects.get(pk=phone.pk).lease_job_id == job.pk  # its run still looked alive
    ClientResult.objects.filter(pk=result.pk).update(runner_seen_at=_long_ago(leases.RUN_STALE_AFTER_S + 1))
    assert watchdog.release_stranded_leases() == [phone.pk]  # leased seconds ago, but its round is over
    assert Device.objects.get(pk=phone.pk).status == DeviceStatus.ONLINE


def test_watchdog_closes_a_round_whose_last_close_was_lost(operator: Any, sent: list) -> None:  # noqa: F811
    job = make_job(operator)
    rnd = make_round(job, 1, status=RoundStatus.TRAINING)
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    for index in range(2):
        add_client(rnd, make_device(f"done-{index}"), ClientState.REPORTED)
    watchdog.watchdog()
    assert ("close_round", (rnd.pk,)) in sent
