"""The exact leave-one-out replay of a recorded job, and the AnalysisRun that carries it: it reproduces
the record, agrees with the influence estimate, flags the phone that did not train honestly, and is
refused above its size limit with a message that says why."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

from typing import Any

import pytest

from training.analysis import loo
from training.analysis.context import job_context
from training.analysis.influence import analyse_job
from training.analysis.replay import RecordAnchoredReplay
from training.fl.strategy import ClientUpdate
from training.jobs import services
from training.models import AnalysisRun, AnalysisStatus, JobLogEntry

from ..training.web_factories import operator  # noqa: F401 - fixture
from .recorded_job import device_named, record_round, record_rounds, tiny_job

pytestmark = pytest.mark.django_db


def test_replay_reproduces_the_record_and_honest_phones_exactly(operator: Any) -> None:
    job = tiny_job(operator, phones=4)
    record_rounds(job, 3, {"rec-2": "label_flip"})
    replay = RecordAnchoredReplay(job, job_context(job), 3)

    assert replay.base_reproduction_error() < 1e-6  # the recorded uploads give the recorded checkpoints
    mismatch = replay.replay_mismatch()
    flipper = str(device_named("rec-2").pk)
    honest = {c: v for c, v in mismatch.items() if c != flipper}
    assert len(honest) == 3 and max(honest.values()) < 1e-4  # honest training is reproduced
    assert mismatch[flipper] > 0.1  # the flipper did not compute what its shard implies


def test_leaving_out_a_phone_that_joined_late_starts_from_the_checkpoint_before_it(operator: Any) -> None:
    job = tiny_job(operator, phones=3)
    record_round(job, 1, reporters=["rec-0", "rec-1"])
    record_round(job, 2)
    replay = RecordAnchoredReplay(job, job_context(job), 2)
    late = str(device_named("rec-2").pk)
    # Without rec-2, round 2 is rec-0 and rec-1 from the recorded round-1 model: their recorded updates.
    expected = replay.strategy.aggregate(
        replay.checkpoint(1),
        2,
        [
            ClientUpdate(u.client_id, u.num_samples, replay.recorded_delta(2, u), {})
            for u in replay.rounds[1].updates
            if u.client_id != late
        ],
        [],
    )[0].weights
    without = replay.without(late)
    assert all(float((without[k] - expected[k]).abs().max()) < 1e-7 for k in expected)
    assert replay.trainings == 0  # nothing had to be retrained


def test_exact_run_agrees_with_the_estimate_and_is_recorded(operator: Any) -> None:
    job = tiny_job(operator, phones=5, clients_per_round=5, rounds=4)
    record_rounds(job, 4, {"rec-1": "label_flip"})
    analyse_job(job.pk)
    run = AnalysisRun.objects.create(job=job, params={"round": 4}, requested_by=operator)

    loo.run_exact_leave_one_out(run.pk)
    run.refresh_from_db()
    assert run.status == AnalysisStatus.COMPLETED, run.error
    assert run.progress == 1.0 and run.cost_seconds > 0 and run.finished_at is not None
    result = run.result
    assert result["round"] == 4 and len(result["clients"]) == 5
    agreement = result["agreement"]["loss"]
    assert agreement["n"] == 5 and agreement["pearson"] > 0.9 and agreement["spearman"] > 0.8
    flipper = str(device_named("rec-1").pk)
    assert agreement["lowest_exact"] == flipper == agreement["lowest_estimated"]
    assert result["clients"][flipper]["loss"] < 0
    assert 0 < result["estimate_seconds"] and 0 < result["cost_ratio"]
    assert "recorded" in result["definition"] and "unknown" in result["definition"]
    assert JobLogEntry.objects.filter(job=job, message__contains="Pearson").exists()

    loo.run_exact_leave_one_out(run.pk)  # a redelivered task leaves a finished run alone
    assert AnalysisRun.objects.get(pk=run.pk).finished_at == run.finished_at


def test_too_big_a_job_is_refused_with_the_reason(operator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = tiny_job(operator, phones=3)
    assert "no committed round" in (loo.refusal(job) or "")
    record_rounds(job, 2)
    assert loo.refusal(job) is None
    monkeypatch.setattr(loo, "MAX_TRAININGS", 10)
    message = loo.refusal(job) or ""
    assert "3 phones × 6 recorded updates" in message and "10" in message
    with pytest.raises(services.JobActionError, match="over the limit"):
        loo.request_exact_leave_one_out(job, operator)
    assert not AnalysisRun.objects.exists()


def test_a_failing_replay_is_recorded_as_failed(operator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = tiny_job(operator, phones=3)
    record_rounds(job, 1)
    run = AnalysisRun.objects.create(job=job, params={"round": 1})

    def broken(self: Any, progress: Any = None) -> Any:
        raise RuntimeError("shard missing")

    monkeypatch.setattr(RecordAnchoredReplay, "run", broken)
    loo.run_exact_leave_one_out(run.pk)
    run.refresh_from_db()
    assert run.status == AnalysisStatus.FAILED and "shard missing" in run.error
    assert JobLogEntry.objects.filter(job=job, level="error", message__contains="failed").exists()
