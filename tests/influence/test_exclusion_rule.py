"""The automatic-exclusion rule on its own: warm-up, most harmful first, the cap, the floor, and phones an
operator put back."""

from __future__ import annotations

import pytest

from training.analysis.exclusion import ExclusionPolicy, choose_exclusions
from training.jobs.config import parse_job_config

POLICY = ExclusionPolicy(warmup_rounds=3, max_fraction=0.3, floor=6)
INFLUENCE = {
    "a": -0.5,
    "b": 0.2,
    "c": -0.1,
    "d": -0.9,
    "e": 0.0,
    "f": 0.4,
    "g": 0.1,
    "h": 0.3,
    "i": 0.2,
    "j": 0.1,
}


def choose(
    round_no: int = 3,
    *,
    excluded: set[str] = frozenset(),
    protected: set[str] = frozenset(),
    policy: ExclusionPolicy = POLICY,
    influence: dict[str, float] = INFLUENCE,
) -> list[str]:  # noqa: E501
    return choose_exclusions(
        round_no, influence, participants=10, excluded=excluded, protected=protected, policy=policy
    )


def test_nobody_is_excluded_during_the_warm_up() -> None:
    assert choose(1) == [] and choose(2) == []
    assert choose(3) == ["d", "a", "c"]  # negative only (e = 0 stays), most harmful first


def test_the_cap_counts_phones_excluded_before() -> None:
    assert choose(excluded={"x"}) == ["d", "a"]  # 30% of 10 = 3, one is out already
    assert choose(excluded={"x", "y", "z"}) == []


def test_the_floor_keeps_enough_phones() -> None:
    tight = ExclusionPolicy(warmup_rounds=0, max_fraction=0.9, floor=8)
    assert choose(0, policy=tight) == ["d", "a"]  # 10 − 8 = 2 may go
    assert choose(0, policy=tight, excluded={"x"}) == ["d"]


def test_already_excluded_and_protected_phones_are_skipped() -> None:
    assert choose(excluded={"d"}) == ["a", "c"]
    assert choose(protected={"d", "a"}) == ["c"]


def test_non_finite_influence_is_ignored() -> None:
    assert choose(influence={"a": float("nan"), "b": float("-inf"), "c": -1.0}) == ["c"]


@pytest.mark.parametrize(
    ("options", "floor"),
    [
        ({"clients_per_round": 10}, 10),  # default: clients per round stay
        ({"clients_per_round": 10, "exclude_min_remaining": 12}, 12),
        ({"clients_per_round": 4, "min_clients": 4, "exclude_min_remaining": 4}, 4),
    ],
)
def test_policy_from_the_job_config(options: dict[str, int], floor: int) -> None:
    config = parse_job_config({**options, "auto_exclude": True, "exclude_warmup_rounds": 4})
    policy = ExclusionPolicy.of(config)
    assert policy == ExclusionPolicy(warmup_rounds=4, max_fraction=0.3, floor=floor)
    assert policy.room(participants=20, excluded=0) == min(6, 20 - floor)
