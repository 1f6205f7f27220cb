"""A phone that lies about its sample count (to outweigh everyone): the behaviour the platform must catch."""

import pytest

from training.fl.misbehaviour import BehaviourError, parse_behaviour


def test_inflate_samples_claims_factor_times_the_shard_and_leaves_the_update_honest() -> None:
    plan = parse_behaviour("inflate_samples:factor=1000")
    assert plan.reported_samples(70) == 70_000
    assert parse_behaviour("inflate_samples").reported_samples(3) == 3_000_000
    assert parse_behaviour("honest").reported_samples(70) == 70
    assert not plan.skips_training


@pytest.mark.parametrize("spec", ["inflate_samples:factor=0", "inflate_samples:factor=1.5"])
def test_inflate_samples_needs_a_whole_factor(spec: str) -> None:
    with pytest.raises(BehaviourError, match="factor must be an integer"):
        parse_behaviour(spec)
