"""Dashboard endpoints of client influence: who may exclude/include a phone and start the exact
leave-one-out (operators, POST only), what they do, and the snapshot's influence section."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from training.analysis import tasks
from training.analysis.influence import analyse_job
from training.models import AnalysisRun, Exclusion, Job, Participant

from ..training.web_factories import make_device, make_job, operator, viewer  # noqa: F401 - fixtures
from .recorded_job import device_named, record_rounds, tiny_job

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def job_with_phones(
    owner: Any, phones: int = 4, prefix: str = "p", **config: Any
) -> tuple[Job, list[Participant]]:
    job = make_job(owner, clients_per_round=2, min_clients=2, **config)
    participants = [
        Participant.objects.create(
            job=job, device=make_device(f"{prefix}{i}"), client_index=i, num_samples=50, shard_sha256="0" * 64
        )
        for i in range(phones)
    ]
    return job, participants


def url(name: str, job: Job, participant: Participant | None = None) -> str:
    args = [job.pk] if participant is None else [job.pk, participant.device_id]
    return reverse(f"training:{name}", args=args)


@pytest.fixture
def queued_loo(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    queued: list[int] = []
    monkeypatch.setattr(tasks.exact_leave_one_out, "delay_on_commit", lambda run_id: queued.append(run_id))
    return queued


def test_viewers_cannot_exclude_include_or_start_a_replay(viewer: Any, operator: Any) -> None:
    job, (first, *_) = job_with_phones(operator)
    client = logged_in(viewer)
    for name in ("participant-exclude", "participant-include"):
        assert client.post(url(name, job, first)).status_code == 403
    assert client.post(url("job-loo", job)).status_code == 403
    assert not Participant.objects.filter(excluded=True).exists() and not AnalysisRun.objects.exists()


def test_get_is_not_allowed(operator: Any) -> None:
    job, (first, *_) = job_with_phones(operator)
    client = logged_in(operator)
    assert client.get(url("participant-exclude", job, first)).status_code == 405
    assert client.get(url("job-loo", job)).status_code == 405


def test_anonymous_is_sent_to_the_login_page(operator: Any) -> None:
    job, (first, *_) = job_with_phones(operator)
    response = Client().post(url("participant-exclude", job, first))
    assert response.status_code == 302 and "login" in response["Location"]


def test_operator_excludes_and_includes_a_phone(operator: Any) -> None:
    job, (first, *_) = job_with_phones(operator)
    client = logged_in(operator)
    response = client.post(
        url("participant-exclude", job, first), {"reason": "battery swelling"}, follow=True
    )
    first.refresh_from_db()
    assert first.excluded and not first.excluded_auto and first.excluded_by == operator
    assert first.excluded_reason == "battery swelling" and first.excluded_round == job.committed_rounds
    assert "p0 excluded from job" in response.content.decode()

    client.post(url("participant-include", job, first))
    first.refresh_from_db()
    assert not first.excluded and first.excluded_reason == "" and first.excluded_by is None
    assert list(Exclusion.objects.filter(job=job).values_list("action", "by__username")) == [
        ("exclude", operator.username),
        ("include", operator.username),
    ]


def test_exclusion_that_would_stall_the_job_is_refused(operator: Any) -> None:
    job, participants = job_with_phones(operator, phones=3)  # a round needs 2
    client = logged_in(operator)
    client.post(url("participant-exclude", job, participants[0]))
    response = client.post(url("participant-exclude", job, participants[1]), follow=True)
    assert "would leave 1 phones, fewer than the 2 a round needs" in response.content.decode()
    assert Participant.objects.filter(job=job, excluded=True).count() == 1


def test_a_finished_jobs_phones_cannot_be_excluded(operator: Any) -> None:
    job, (first, *_) = job_with_phones(operator, status="completed")
    response = logged_in(operator).post(url("participant-exclude", job, first), follow=True)
    assert "cannot be excluded" in response.content.decode()
    assert not Participant.objects.filter(excluded=True).exists()


def test_another_jobs_phone_is_404(operator: Any) -> None:
    job, _ = job_with_phones(operator)
    other, (stranger, *_) = job_with_phones(operator, prefix="q", name="other")
    assert logged_in(operator).post(url("participant-exclude", job, stranger)).status_code == 404


def test_exact_loo_is_queued_once_and_refused_with_the_reason(operator: Any, queued_loo: list[int]) -> None:
    job = tiny_job(operator, phones=3)
    client = logged_in(operator)
    response = client.post(url("job-loo", job), follow=True)
    assert "no committed round to replay yet" in response.content.decode()
    record_rounds(job, 1)
    response = client.post(url("job-loo", job), follow=True)
    run = AnalysisRun.objects.get(job=job)
    assert queued_loo == [run.pk] and run.params == {"round": 1} and run.requested_by == operator
    assert f"run #{run.pk} queued" in response.content.decode()
    response = client.post(url("job-loo", job), follow=True)  # one at a time
    assert "is queued already" in response.content.decode() and AnalysisRun.objects.count() == 1


def test_exact_loo_refuses_algorithms_it_cannot_replay(operator: Any, queued_loo: list[int]) -> None:
    job = make_job(operator, algorithm="scaffold")
    Job.objects.filter(pk=job.pk).update(committed_rounds=2)
    response = logged_in(operator).post(url("job-loo", job), follow=True)
    assert "scaffold is not supported" in response.content.decode() and not queued_loo


def test_snapshot_carries_the_influence_section_and_figures(operator: Any, viewer: Any) -> None:
    job = tiny_job(operator, phones=3, clients_per_round=2, min_clients=2, backdoor_test=True)
    record_rounds(job, 2, {"rec-0": "label_flip"})
    analyse_job(job.pk)
    client = logged_in(operator)
    client.post(
        url("participant-exclude", job, Participant.objects.get(job=job, device=device_named("rec-1")))
    )

    snapshot = json.loads(logged_in(viewer).get(url("job-snapshot", job)).content)
    section = snapshot["influence"]
    assert section["enabled"] and section["last_round"] == 2 and "test set" in section["fisher_note"]
    ranking = section["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3] and ranking[0]["label"] == "rec-0"
    assert ranking[0]["loss"] < 0 and ranking[0]["rounds_in"] == 2
    assert [r["excluded"] for r in ranking if r["label"] == "rec-1"] == [True]
    assert len(section["costs"]) == 2 and section["total_fisher_products"] > 0
    assert [a["round"] for a in section["attack"]] == [1, 2]
    assert {"influence_heatmap", "influence_bars", "influence_cost", "attack_success"} <= set(
        snapshot["figures"]
    )
    heatmap = snapshot["figures"]["influence_heatmap"]["data"][0]
    assert heatmap["x"] == [1, 2] and heatmap["y"][0] == "rec-0"
    markers = snapshot["figures"]["accuracy_loss"]["layout"]["shapes"]
    assert any(shape.get("x0") == 2 and shape.get("yref") == "paper" for shape in markers)

    page = logged_in(viewer).get(url("job-detail", job)).content.decode()
    assert 'id="influence-section"' in page and 'data-can-operate="0"' in page
    assert "loo-button" not in page  # viewers see the runs, not the button
    assert 'data-can-operate="1"' in client.get(url("job-detail", job)).content.decode()
