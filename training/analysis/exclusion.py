"""The automatic-exclusion rule: after a warm-up, exclude the clients whose cumulative influence on the
test loss is negative (the model would be better without them), most harmful first, within a cap on the
share excluded and a floor on the phones that remain. A pure function, so it is tested on its own."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from training.jobs.config import JobConfig


@dataclass(frozen=True)
class ExclusionPolicy:
    warmup_rounds: int  # no exclusion until this many rounds have committed
    max_fraction: float  # at most this share of the job's phones excluded (in total)
    floor: int  # at least this many phones stay in the job

    @staticmethod
    def of(config: JobConfig) -> ExclusionPolicy:
        return ExclusionPolicy(
            warmup_rounds=config.exclude_warmup_rounds,
            max_fraction=config.exclude_max_fraction,
            floor=config.influence_floor,
        )

    def room(self, participants: int, excluded: int) -> int:
        """How many more phones may be excluded now."""
        cap = math.floor(self.max_fraction * participants) - excluded
        above_floor = participants - excluded - self.floor
        return max(0, min(cap, above_floor))

    def describe(self, participants: int) -> str:
        return (
            f"warm-up {self.warmup_rounds} rounds, at most {math.floor(self.max_fraction * participants)} "
            f"of {participants} phones, at least {self.floor} kept"
        )


def choose_exclusions(
    round_no: int,
    influence: Mapping[str, float],
    *,
    participants: int,
    excluded: Collection[str],
    protected: Collection[str],
    policy: ExclusionPolicy,
) -> list[str]:
    """Clients to exclude after `round_no`, most harmful first.

    influence: client -> cumulative loss influence (negative = harms). `excluded` are out already;
    `protected` were put back by an operator and are left to the operator from then on.
    """
    if round_no < policy.warmup_rounds:
        return []
    room = policy.room(participants, len(excluded))
    if room == 0:
        return []
    harmful = sorted(
        (value, client)
        for client, value in influence.items()
        if math.isfinite(value) and value < 0 and client not in excluded and client not in protected
    )
    return [client for _, client in harmful[:room]]
