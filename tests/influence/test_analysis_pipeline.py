"""The influence analysis of committed rounds, on a small job's real record (no phones, no workers):
in order, idempotent, rebuilt after a crash, with its cost recorded, the backdoor test, and automatic
exclusion with its warm-up and floor."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

from typing import Any

import pytest

from training.analysis.context import job_context
from training.analysis.influence import analyse_job, load_tracker, round_entries
from training.jobs import storage
from training.models import ClientInfluence, Exclusion, Job, JobLogEntry, Participant, RoundAnalysis

from ..training.web_factories import operator  # noqa: F401 - fixture
from .recorded_job import device_named, record_round, record_rounds, tiny_job

pytestmark = pytest.mark.django_db

FLIP = {"rec-0": "label_flip"}


def influence_table(job: Any) -> dict[tuple[int, str], tuple[Any, ...]]:
    return {
        (r.round_number, r.device.name): (r.loss, r.loss_first_order, r.accuracy, r.params_norm, r.selected)
        for r in ClientInfluence.objects.filter(job=job).select_related("device")
    }


def test_every_round_is_analysed_once_in_order_with_its_cost(operator: Any) -> None:
    job = tiny_job(operator)
    record_rounds(job, 2, FLIP)
    assert analyse_job(job.pk).analysed == [1, 2]
    record_round(job, 3, FLIP)
    assert analyse_job(job.pk).analysed == [3]
    assert analyse_job(job.pk).analysed == []  # a re-run (a redelivered task) is a no-op

    table = influence_table(job)
    assert {number for number, _ in table} == {1, 2, 3}
    assert all(len([k for k in table if k[0] == n]) == 4 for n in (1, 2, 3))  # every phone, every round
    costs = list(RoundAnalysis.objects.filter(job=job).order_by("round_number"))
    assert [c.round_number for c in costs] == [1, 2, 3]
    assert all(c.influence and c.seconds > 0 for c in costs)
    assert costs[0].fisher_products == 0  # nothing to propagate before the first round's ε exists
    assert all(c.fisher_products > 0 and c.per_sample_gradients > 0 for c in costs[1:])
    assert load_tracker(job_context(job)).last_round == 3
    # The label flipper harms the model: it ranks lowest on the test loss, after every round.
    for number in (1, 2, 3):
        by_phone = {name: v[0] for (n, name), v in table.items() if n == number}
        assert min(by_phone, key=by_phone.get) == "rec-0"
        assert by_phone["rec-0"] < 0 < min(v for k, v in by_phone.items() if k != "rec-0")


def test_analysing_late_in_one_go_equals_analysing_round_by_round(operator: Any) -> None:
    job = tiny_job(operator)
    record_rounds(job, 3, FLIP)
    assert analyse_job(job.pk).analysed == [1, 2, 3]  # round 3's task also did rounds 1 and 2
    at_once = influence_table(job)

    ClientInfluence.objects.filter(job=job).delete()
    RoundAnalysis.objects.filter(job=job).delete()
    storage.influence_state_path(job.pk).unlink()
    for number in (1, 2, 3):  # from scratch, one task per commit, as the rounds come in
        Job.objects.filter(pk=job.pk).update(committed_rounds=number)
        assert analyse_job(job.pk).analysed == [number]
    assert influence_table(job) == at_once


def test_a_crash_between_the_state_file_and_the_rows_is_repaired(operator: Any) -> None:
    job = tiny_job(operator)
    record_rounds(job, 3, FLIP)
    analyse_job(job.pk)
    expected = influence_table(job)

    # The tracker file says round 3 is folded in, but its rows never reached the database.
    ClientInfluence.objects.filter(job=job, round_number=3).delete()
    RoundAnalysis.objects.filter(job=job, round_number=3).delete()
    assert analyse_job(job.pk).analysed == [3]
    assert influence_table(job) == expected

    # The state file is lost: the tracker is rebuilt from the recorded rounds; rows already there stay.
    storage.influence_state_path(job.pk).unlink()
    RoundAnalysis.objects.filter(job=job, round_number=3).delete()
    ClientInfluence.objects.filter(job=job, round_number=3).delete()
    assert analyse_job(job.pk).analysed == [3]
    assert influence_table(job) == expected
    tracker = load_tracker(job_context(job))
    assert tracker.last_round == 3 and set(round_entries(tracker, 3)) == {
        str(p.device_id) for p in job.participants.all()
    }


def test_influence_off_records_nothing_but_the_backdoor_test_still_runs(operator: Any) -> None:
    job = tiny_job(operator, influence="off", backdoor_test=True, backdoor_target=0)
    record_rounds(job, 2, {"rec-1": "backdoor:target=0,fraction=0.5"})
    outcome = analyse_job(job.pk)
    assert outcome.analysed == [1, 2] and not outcome.influence
    assert not ClientInfluence.objects.filter(job=job).exists()
    rates = list(RoundAnalysis.objects.filter(job=job).values_list("attack_success_rate", flat=True))
    assert len(rates) == 2 and all(r is not None and 0.0 <= r <= 1.0 for r in rates)
    assert not storage.influence_state_path(job.pk).exists()


def test_nothing_to_analyse_when_influence_is_off_and_no_backdoor_test(operator: Any) -> None:
    job = tiny_job(operator, influence="off")
    record_rounds(job, 1)
    assert analyse_job(job.pk).analysed == []
    assert not RoundAnalysis.objects.filter(job=job).exists()


def test_auto_exclusion_waits_for_the_warm_up_and_is_recorded(operator: Any) -> None:
    job = tiny_job(
        operator,
        phones=5,
        clients_per_round=3,
        min_clients=2,
        rounds=4,
        auto_exclude=True,
        exclude_warmup_rounds=2,
        exclude_max_fraction=0.4,
        exclude_min_remaining=3,
    )
    record_round(job, 1, FLIP)
    analyse_job(job.pk)
    assert not Participant.objects.filter(job=job, excluded=True).exists()  # round 1 < warm-up

    record_round(job, 2, FLIP)
    outcome = analyse_job(job.pk)
    flipper = Participant.objects.get(job=job, device=device_named("rec-0"))
    assert outcome.excluded == [str(flipper.device_id)]
    assert flipper.excluded and flipper.excluded_auto and flipper.excluded_round == 2
    assert flipper.excluded_at is not None and "< 0" in flipper.excluded_reason
    exclusion = Exclusion.objects.get(job=job)
    assert (exclusion.action, exclusion.auto, exclusion.round_number) == ("exclude", True, 2)
    assert JobLogEntry.objects.filter(job=job, message__contains="rec-0 excluded automatically").exists()
    # Honest phones help: nobody else had negative influence, so nobody else is excluded.
    assert Participant.objects.filter(job=job, excluded=True).count() == 1
