"""When a phone is reachable: pure, seeded functions of the lab time t (seconds since the lab started).

Every model answers `online_at(t)` the same way for the same seed, whatever order it is asked in, so a lab
is reproducible and tests can ask about any instant without waiting for it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devices.virtual.profile import AvailabilityProfile


class AvailabilityModel(Protocol):
    def online_at(self, t: float) -> bool: ...


@dataclass(frozen=True)
class AlwaysOn:
    def online_at(self, t: float) -> bool:
        return True


@dataclass(frozen=True)
class AlternatingGroups:
    """FedLaAvg's setting: group g is online during every n-th period."""

    group: int
    n_groups: int
    period_s: float

    def online_at(self, t: float) -> bool:
        return math.floor(t / self.period_s) % self.n_groups == self.group


class MarkovOnOff:
    """Two-state chain with exponential holding times; starts in its stationary distribution."""

    def __init__(self, mean_on_s: float, mean_off_s: float, seed: int) -> None:
        self._means = (mean_off_s, mean_on_s)
        self._rng = random.Random(seed)
        p_on = mean_on_s / (mean_on_s + mean_off_s)
        self._first_online = self._rng.random() < p_on
        self._switch_times: list[float] = [0.0]  # state flips at each of these (the first is t=0)

    def online_at(self, t: float) -> bool:
        if t < 0:
            return self._first_online
        while self._switch_times[-1] <= t:  # extend the schedule lazily, always with the same draws
            state_online = self._first_online ^ ((len(self._switch_times) - 1) % 2 == 1)
            self._switch_times.append(
                self._switch_times[-1] + self._rng.expovariate(1 / self._means[state_online])
            )
        flips = bisect.bisect_right(self._switch_times, t) - 1
        return self._first_online ^ (flips % 2 == 1)


@dataclass(frozen=True)
class Diurnal:
    """Online with probability p(t) per slot, p peaking at `peak_at` of each period (people charge and
    idle their phones in the evening and at night, when FL clients are typically eligible)."""

    period_s: float
    slot_s: float
    min_p: float
    max_p: float
    peak_at: float
    seed: int

    def probability(self, t: float) -> float:
        phase = (t / self.period_s - self.peak_at) * 2 * math.pi
        return self.min_p + (self.max_p - self.min_p) * (1 + math.cos(phase)) / 2

    def online_at(self, t: float) -> bool:
        slot = math.floor(t / self.slot_s)
        digest = hashlib.blake2b(f"{self.seed}:{slot}".encode(), digest_size=8).digest()
        draw = int.from_bytes(digest, "big") / 2**64  # a uniform draw fixed by (seed, slot)
        return draw < self.probability(slot * self.slot_s)


class Trace:
    """Replays recorded on/off times: lines "<seconds> on|off" (or 1|0); '#' starts a comment."""

    def __init__(self, events: list[tuple[float, bool]], loop_s: float = 0.0) -> None:
        if not events:
            raise ValueError("a trace needs at least one event")
        self._times = [time for time, _ in sorted(events)]
        self._states = [state for _, state in sorted(events)]
        self._loop_s = loop_s

    @classmethod
    def from_file(cls, path: Path, loop_s: float = 0.0) -> Trace:
        return cls(parse_trace(path.read_text(encoding="utf-8")), loop_s)

    def online_at(self, t: float) -> bool:
        if self._loop_s > 0:
            t = t % self._loop_s
        index = bisect.bisect_right(self._times, t) - 1
        # before the first event the phone is in the state that event leaves
        return self._states[max(index, 0)] if index >= 0 else not self._states[0]


def parse_trace(text: str) -> list[tuple[float, bool]]:
    events = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or parts[1].lower() not in {"on", "off", "1", "0"}:
            raise ValueError(f"trace line {number}: expected '<seconds> on|off', got {raw!r}")
        events.append((float(parts[0]), parts[1].lower() in {"on", "1"}))
    return events


def build_availability(profile: AvailabilityProfile, seed: int) -> AvailabilityModel:
    match profile.kind:
        case "always":
            return AlwaysOn()
        case "markov":
            return MarkovOnOff(profile.mean_on_s, profile.mean_off_s, seed)
        case "diurnal":
            return Diurnal(
                profile.period_s,
                profile.slot_s,
                profile.min_online_p,
                profile.max_online_p,
                profile.peak_at,
                seed,
            )
        case "alternating":
            return AlternatingGroups(profile.group, profile.n_groups, profile.period_s)
        case "trace":
            return Trace.from_file(Path(profile.trace_file), profile.loop_s)
    raise ValueError(f"unknown availability kind {profile.kind!r}")
