"""Lab-wide availability scenarios: one command-line choice that sets every phone's availability model.

    --scenario alternating --period-s 30 --groups 2     FedLaAvg's experiment (ALGORITHMS.md §4): group g is
                                                         online during the periods k with k mod G = g
    --scenario diurnal --period-s 600 [--groups 3]       a "day" lasting period_s; each phone is online with a
                                                         day-shaped probability; group g's peak is shifted by
                                                         g/G of a day (time zones)
    --scenario markov --mean-on-s 60 --mean-off-s 20     every phone its own seeded on/off chain
    --scenario always                                    every phone always online

A scenario replaces the `availability` of every profile (built-in catalogue or --profiles file); the rest of
each profile (model, speed, battery, faults) is kept. Without --scenario the profiles' own models apply.

Group rule (documented so a benchmark can align groups with data): phone i of N — 0-based, in lab order,
i.e. serial vphone-(i+1) on port base+i — is in group floor(i·G/N). Groups are contiguous blocks of phones,
as equal as N allows: with N = 20 and G = 2, vphone-01..10 are group 0 and vphone-11..20 group 1.
The platform numbers a job's clients in registration order of the phones, so registering the phones in a
chosen order decides which client (and so which data shard) lands in which group; bench/availability_bias.py
does exactly that.

Turns on demand: the lab process moves the scenario's clock one period forward on SIGUSR2 (LabThread /
VirtualLab.advance_clock in-process). With a period far longer than the run, an alternating scenario then
changes turn only when told — bench/availability_bias.py uses it to give each group exactly E rounds.

Every phone describes its model in one short line (`describe_availability`), answered to
`getprop fedfleet.availability` so the platform can show the scenario on the fleet page.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devices.virtual.profile import AvailabilityProfile, PhoneProfile, ProfileError

ScenarioKind = Literal["always", "alternating", "diurnal", "markov"]
SCENARIO_KINDS: tuple[str, ...] = ("always", "alternating", "diurnal", "markov")
# The system property a virtual phone answers with its availability description (devices/probing.py reads it).
AVAILABILITY_PROPERTY = "fedfleet.availability"
DEFAULT_PERIOD_S = {"alternating": 60.0, "diurnal": 86400.0}


class ScenarioError(ProfileError):
    """A scenario that cannot be applied as given (the command line reports it like a bad profile)."""


@dataclass(frozen=True)
class Scenario:
    kind: ScenarioKind
    period_s: float | None = None  # alternating: one group's turn; diurnal: one "day"
    groups: int = 2  # alternating: turns; diurnal: time zones (1 = every phone peaks together)
    mean_on_s: float = 600.0  # markov
    mean_off_s: float = 120.0  # markov
    min_online_p: float = 0.1  # diurnal
    max_online_p: float = 0.9  # diurnal
    slot_s: float | None = None  # diurnal: how long one on/off draw lasts (default period/96, ≥ 1 s)
    peak_at: float = 0.875  # diurnal: fraction of the day where group 0 peaks (21:00)

    def __post_init__(self) -> None:
        if self.kind not in SCENARIO_KINDS:
            raise ScenarioError(f"unknown scenario {self.kind!r}; choose one of {', '.join(SCENARIO_KINDS)}")
        if self.period_s is not None and not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ScenarioError(f"--period-s must be a positive number of seconds, got {self.period_s}")
        if self.groups < 1:
            raise ScenarioError(f"--groups must be at least 1, got {self.groups}")
        for name in ("mean_on_s", "mean_off_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ScenarioError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.min_online_p <= self.max_online_p <= 1.0:
            raise ScenarioError("diurnal probabilities need 0 <= --min-online <= --max-online <= 1")
        if self.slot_s is not None and not (math.isfinite(self.slot_s) and self.slot_s > 0):
            raise ScenarioError(f"--slot-s must be positive, got {self.slot_s}")

    @property
    def period(self) -> float:
        return self.period_s if self.period_s is not None else DEFAULT_PERIOD_S.get(self.kind, 60.0)


def group_of(index: int, phones: int, groups: int) -> int:
    """The group of phone `index` (0-based) among `phones`: floor(index·groups/phones), contiguous blocks."""
    if not 0 <= index < phones:
        raise ValueError(f"phone index {index} outside 0..{phones - 1}")
    return index * groups // phones


def availability_for(scenario: Scenario, index: int, phones: int) -> AvailabilityProfile:
    """Phone `index`'s availability model under the scenario."""
    match scenario.kind:
        case "always":
            return AvailabilityProfile(kind="always")
        case "alternating":
            return AvailabilityProfile(
                kind="alternating",
                group=group_of(index, phones, scenario.groups),
                n_groups=scenario.groups,
                period_s=scenario.period,
            )
        case "diurnal":
            day = scenario.period
            zone = group_of(index, phones, scenario.groups)
            return AvailabilityProfile(
                kind="diurnal",
                period_s=day,
                slot_s=scenario.slot_s if scenario.slot_s is not None else max(1.0, day / 96),
                min_online_p=scenario.min_online_p,
                max_online_p=scenario.max_online_p,
                peak_at=(scenario.peak_at + zone / scenario.groups) % 1.0,
            )
        case "markov":
            return AvailabilityProfile(
                kind="markov", mean_on_s=scenario.mean_on_s, mean_off_s=scenario.mean_off_s
            )
    raise ScenarioError(f"unknown scenario {scenario.kind!r}")


def apply_scenario(profiles: Sequence[PhoneProfile], scenario: Scenario | None) -> list[PhoneProfile]:
    """Every profile with its availability replaced by the scenario's (unchanged when scenario is None)."""
    if scenario is None:
        return list(profiles)
    if scenario.kind == "alternating" and scenario.groups > len(profiles):
        raise ScenarioError(f"{scenario.groups} groups need at least as many phones, got {len(profiles)}")
    return [
        dataclasses.replace(profile, availability=availability_for(scenario, index, len(profiles)))
        for index, profile in enumerate(profiles)
    ]


def _seconds(value: float) -> str:
    """30 → "30 s", 12.5 → "12.5 s", 1e6 → "1000000 s" (never exponent notation, for people)."""
    return f"{value:.0f} s" if value >= 1000 or value == int(value) else f"{value:g} s"


def describe_availability(availability: AvailabilityProfile) -> str:
    """One short ASCII line (≤ 100 characters) saying when the phone is online, for people."""
    a = availability
    match a.kind:
        case "always":
            return "always on"
        case "alternating":
            return f"alternating: group {a.group + 1} of {a.n_groups}, period {_seconds(a.period_s)}"
        case "diurnal":
            return (
                f"diurnal: day {_seconds(a.period_s)}, online p {a.min_online_p:g}-{a.max_online_p:g}, "
                f"peak at {a.peak_at:.2f} of the day"
            )
        case "markov":
            return f"markov on/off: mean on {_seconds(a.mean_on_s)}, off {_seconds(a.mean_off_s)}"
        case "trace":
            loop = f", looped every {_seconds(a.loop_s)}" if a.loop_s > 0 else ""
            return f"trace {Path(a.trace_file).name}{loop}"[:100]
    return a.kind


# --- command line ---------------------------------------------------------------------------------------
def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("availability scenario (replaces every profile's availability model)")
    group.add_argument("--scenario", choices=SCENARIO_KINDS, default=None, help="lab-wide availability model")
    group.add_argument(
        "--period-s", type=float, default=None, help="alternating: one group's turn; diurnal: a day"
    )
    group.add_argument(
        "--groups", type=int, default=2, help="alternating groups / diurnal time zones (default 2)"
    )
    group.add_argument(
        "--mean-on-s", type=float, default=600.0, help="markov: mean online time (default 600)"
    )
    group.add_argument(
        "--mean-off-s", type=float, default=120.0, help="markov: mean offline time (default 120)"
    )
    group.add_argument("--min-online", type=float, default=0.1, help="diurnal: lowest online probability")
    group.add_argument("--max-online", type=float, default=0.9, help="diurnal: highest online probability")
    group.add_argument("--slot-s", type=float, default=None, help="diurnal: length of one on/off draw")
    group.add_argument(
        "--hold-online",
        type=float,
        nargs="?",
        const=math.inf,
        default=None,
        metavar="SECONDS",
        help="keep every phone online (to register them and prepare a job) until SIGUSR1, or for SECONDS; "
        "the scenario's clock starts then",
    )


def scenario_from_args(args: argparse.Namespace) -> Scenario | None:
    """The scenario the command line asks for; None without --scenario. Options of other scenarios are
    refused rather than ignored, so `--scenario markov --period-s 30` cannot silently do nothing."""
    kind = getattr(args, "scenario", None)
    if kind is None:
        stray = [
            f"--{n.replace('_', '-')}" for n in ("period_s", "slot_s") if getattr(args, n, None) is not None
        ]
        if stray:
            raise ScenarioError(f"{', '.join(stray)} need --scenario")
        return None
    if kind != "diurnal" and getattr(args, "slot_s", None) is not None:
        raise ScenarioError("--slot-s applies to --scenario diurnal only")
    if kind in ("always", "markov") and getattr(args, "period_s", None) is not None:
        raise ScenarioError(f"--period-s does not apply to --scenario {kind}")
    return Scenario(
        kind=kind,
        period_s=args.period_s,
        groups=args.groups,
        mean_on_s=args.mean_on_s,
        mean_off_s=args.mean_off_s,
        min_online_p=args.min_online,
        max_online_p=args.max_online,
        slot_s=args.slot_s,
    )


def hold_from_args(args: argparse.Namespace) -> float | None:
    """Seconds to hold every phone online (math.inf = until released), or None for no hold."""
    hold = getattr(args, "hold_online", None)
    if hold is not None and not hold >= 0:
        raise ScenarioError(f"--hold-online must be a non-negative number of seconds, got {hold}")
    return hold
