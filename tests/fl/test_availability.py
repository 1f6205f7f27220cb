"""Availability matrix, participation and bias on a fixed three-phone record with hand-computed values."""

import math

import pytest

from training.fl.availability import (
    STATES,
    UNRECORDED_CODE,
    availability_bias,
    availability_matrix,
    kl_divergence,
    label_distribution,
    participation,
    states_from_records,
    total_variation,
)

# Three classes. Population counts: [10, 10, 30] -> distribution [0.2, 0.2, 0.6].
HISTOGRAMS = {"a": [10, 0, 0], "b": [0, 10, 10], "c": [0, 0, 20]}
ROUNDS = {
    1: {"a": "reported", "b": "idle", "c": "offline"},
    2: {"a": "offline", "b": "reported", "c": "reported"},
    3: {"a": "failed", "b": "late", "c": "selected"},
}


def code(state: str) -> int:
    return STATES.index(state)


def test_matrix_is_phone_by_round_with_state_codes():
    m = availability_matrix(ROUNDS)
    assert m.client_ids == ["a", "b", "c"]
    assert m.rounds == [1, 2, 3]
    assert m.codes == [
        [code("reported"), code("offline"), code("failed")],
        [code("idle"), code("reported"), code("late")],
        [code("offline"), code("reported"), code("selected")],
    ]


def test_matrix_marks_gaps_as_unrecorded_not_offline():
    m = availability_matrix({1: {"a": "idle"}, 2: {}}, client_ids=["a", "d"], rounds=[1, 2, 3])
    assert m.codes == [[code("idle"), UNRECORDED_CODE, UNRECORDED_CODE], [UNRECORDED_CODE] * 3]


def test_unknown_state_is_rejected():
    with pytest.raises(ValueError, match="unknown availability state"):
        availability_matrix({1: {"a": "sleeping"}})
    with pytest.raises(ValueError, match="unknown availability state"):
        states_from_records([{"round": 1, "client_id": "a", "state": "Reported"}])


def test_states_from_records_groups_rows_by_round():
    rows = [
        {"round": 2, "client_id": "b", "state": "late"},
        {"round": 1, "client_id": "a", "state": "reported"},
        {"round": 2, "client_id": "a", "state": "offline"},
    ]
    assert states_from_records(rows) == {1: {"a": "reported"}, 2: {"b": "late", "a": "offline"}}


def test_participation_counts_against_data_share():
    rows = {r.client_id: r for r in participation(ROUNDS, {"a": 10, "b": 20, "c": 20})}
    assert (rows["a"].rounds_online, rows["a"].times_selected, rows["a"].times_reported) == (2, 2, 1)
    assert (rows["b"].rounds_online, rows["b"].times_selected, rows["b"].times_reported) == (3, 2, 1)
    assert (rows["c"].rounds_online, rows["c"].times_selected, rows["c"].times_reported) == (2, 2, 1)
    assert rows["a"].participation_share == pytest.approx(1 / 3)
    assert [rows[c].data_share for c in "abc"] == pytest.approx([0.2, 0.4, 0.4])


def test_participation_includes_phones_that_never_appear():
    rows = participation({1: {"a": "reported"}}, {"a": 5, "z": 15})
    assert [(r.client_id, r.times_reported, r.participation_share, r.data_share) for r in rows] == [
        ("a", 1, 1.0, 0.25),
        ("z", 0, 0.0, 0.75),
    ]


def test_distances_on_hand_values():
    assert label_distribution([[10, 0, 0], [0, 10, 10]]) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert label_distribution([]) is None
    assert total_variation([1, 0, 0], [0.2, 0.2, 0.6]) == pytest.approx(0.8)
    assert kl_divergence([1, 0, 0], [0.2, 0.2, 0.6]) == pytest.approx(math.log(5))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_bias_per_round_and_cumulative():
    bias = availability_bias(ROUNDS, HISTOGRAMS)
    r1, r2, r3 = bias
    # Round 1: only "a" (all class 0) reported.
    assert (r1.round_no, r1.reporters) == (1, 1)
    assert r1.tv == pytest.approx(0.8)
    assert r1.kl == pytest.approx(math.log(5))
    assert r1.cumulative_tv == pytest.approx(0.8)
    # Round 2: b + c -> [0, 10, 30] / 40 = [0, .25, .75].
    assert r2.tv == pytest.approx(0.2)
    assert r2.kl == pytest.approx(math.log(1.25))
    # a, b and c have each reported once: the cumulative mixture is exactly the population.
    assert r2.cumulative_tv == pytest.approx(0.0)
    assert r2.cumulative_kl == pytest.approx(0.0)
    # Round 3: nobody reported -> undefined for the round, cumulative carries over.
    assert (r3.reporters, r3.tv, r3.kl) == (0, None, None)
    assert r3.cumulative_tv == pytest.approx(0.0)


def test_bias_rejects_reporter_without_histogram():
    with pytest.raises(ValueError, match="no label histogram"):
        availability_bias({1: {"x": "reported"}}, HISTOGRAMS)
