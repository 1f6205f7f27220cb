"""Availability as data: who was online, who took part, and how biased the aggregated updates were.

Pure functions over plain dicts and lists, so the Django side can feed recorded rounds straight in and the
charts modules can turn the results into figures. Nothing here imports Django or touches I/O.

Inputs
- `round_states`: ``{round_no: {client_id: state}}`` where state is one of `STATES` (what the engine
  recorded for that phone in that round). A phone with no record in a round is "unrecorded", not offline:
  a gap in the record must stay visible rather than look like an offline phone.
- `label_histograms`: ``{client_id: [count of class 0, count of class 1, ...]}`` — each phone's local
  label counts (all the same length). Counts, not frequencies: summing counts is what makes the mixture
  sample-weighted.

The "availability bias" of a round is the distance between the label distribution the aggregated updates
represented (the summed histograms of the phones that *reported*) and the whole population's label
distribution. A job whose updates come mostly from phones that are online often (and hold some classes)
shows a large, oscillating bias; FedLaAvg's selection of the longest-idle phones should shrink it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

OFFLINE = "offline"
IDLE = "idle"  # online and eligible, not selected
SELECTED = "selected"  # selected; no outcome recorded (e.g. round still running)
REPORTED = "reported"  # update aggregated
LATE = "late"  # update arrived after the deadline, not aggregated
FAILED = "failed"  # dropped out, crashed or sent a rejected update

STATES: tuple[str, ...] = (OFFLINE, IDLE, SELECTED, REPORTED, LATE, FAILED)
UNRECORDED_CODE = -1
_CODE_OF_STATE = {state: code for code, state in enumerate(STATES)}
# Every state in which the strategy chose the phone (whatever happened afterwards).
_CHOSEN_STATES = frozenset({SELECTED, REPORTED, LATE, FAILED})

RoundStates = Mapping[int, Mapping[str, str]]
LabelHistograms = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class AvailabilityMatrix:
    """Phone × round grid for the heatmap: `codes[i][j]` is the index into `STATES` of phone
    `client_ids[i]` in round `rounds[j]`, or `UNRECORDED_CODE`."""

    client_ids: list[str]
    rounds: list[int]
    codes: list[list[int]]
    states: tuple[str, ...] = STATES


@dataclass(frozen=True)
class ParticipationRow:
    """One phone's participation against its share of the data."""

    client_id: str
    rounds_online: int  # rounds in any state other than offline (recorded rounds only)
    times_selected: int  # selected, reported, late or failed
    times_reported: int  # updates actually aggregated
    participation_share: float  # times_reported / all reports in the job (0 if nobody reported)
    data_share: float  # num_samples / all samples (0 if no samples are known)


@dataclass(frozen=True)
class RoundBias:
    """Availability bias of one round: `tv`/`kl` for the phones that reported in this round, and
    `cumulative_tv`/`cumulative_kl` for every update aggregated up to and including this round.
    None where nothing was aggregated yet (the distance is undefined, not zero)."""

    round_no: int
    reporters: int
    tv: float | None
    kl: float | None
    cumulative_tv: float | None
    cumulative_kl: float | None


def states_from_records(records: Iterable[Mapping[str, object]]) -> dict[int, dict[str, str]]:
    """Group flat records ``{"round": r, "client_id": c, "state": s}`` (e.g. database rows as dicts)
    into ``{round: {client_id: state}}``. Unknown states are rejected so a typo cannot pass silently."""
    grouped: dict[int, dict[str, str]] = {}
    for record in records:
        state = str(record["state"])
        _check_state(state)
        round_no = int(str(record["round"]))
        grouped.setdefault(round_no, {})[str(record["client_id"])] = state
    return grouped


def availability_matrix(
    round_states: RoundStates,
    client_ids: Sequence[str] | None = None,
    rounds: Sequence[int] | None = None,
) -> AvailabilityMatrix:
    """Build the heatmap grid. Phones and rounds default to every one that appears, sorted; pass
    `client_ids` to include phones that never appear in the record (their cells are unrecorded)."""
    for states in round_states.values():
        for state in states.values():
            _check_state(state)
    row_ids = list(client_ids) if client_ids is not None else _all_clients(round_states)
    columns = list(rounds) if rounds is not None else sorted(round_states)
    codes = [
        [_CODE_OF_STATE.get(round_states.get(r, {}).get(cid, ""), UNRECORDED_CODE) for r in columns]
        for cid in row_ids
    ]
    return AvailabilityMatrix(client_ids=row_ids, rounds=columns, codes=codes)


def participation(
    round_states: RoundStates, sample_counts: Mapping[str, int], client_ids: Sequence[str] | None = None
) -> list[ParticipationRow]:
    """Participation counts per phone next to its data share. Over-represented phones are those whose
    participation share far exceeds their data share."""
    row_ids = list(client_ids) if client_ids is not None else _all_clients(round_states, sample_counts)
    online = dict.fromkeys(row_ids, 0)
    chosen = dict.fromkeys(row_ids, 0)
    reported = dict.fromkeys(row_ids, 0)
    for states in round_states.values():
        for cid, state in states.items():
            _check_state(state)
            if cid not in online:
                continue
            online[cid] += state != OFFLINE
            chosen[cid] += state in _CHOSEN_STATES
            reported[cid] += state == REPORTED
    total_reports = sum(reported.values())
    total_samples = sum(max(0, int(n)) for n in sample_counts.values())
    return [
        ParticipationRow(
            client_id=cid,
            rounds_online=online[cid],
            times_selected=chosen[cid],
            times_reported=reported[cid],
            participation_share=reported[cid] / total_reports if total_reports else 0.0,
            data_share=max(0, int(sample_counts.get(cid, 0))) / total_samples if total_samples else 0.0,
        )
        for cid in row_ids
    ]


def label_distribution(histograms: Iterable[Sequence[float]]) -> list[float] | None:
    """Sample-weighted label distribution of a group of phones (sum of counts, normalised);
    None for an empty group or one with no samples."""
    total: list[float] | None = None
    for hist in histograms:
        if total is None:
            total = [0.0] * len(hist)
        if len(hist) != len(total):
            raise ValueError("label histograms must all have the same number of classes")
        for k, count in enumerate(hist):
            if count < 0 or not math.isfinite(count):
                raise ValueError(f"label counts must be finite and non-negative, got {count!r}")
            total[k] += float(count)
    if total is None:
        return None
    mass = sum(total)
    return [c / mass for c in total] if mass > 0 else None


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """TV distance ½·Σ|p − q| between two distributions over the same classes; in [0, 1]."""
    _check_same_length(p, q)
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p ‖ q) in nats. We compare the represented distribution p against the population q, which
    covers every class p does (reporters are part of the population), so it is finite in our use;
    infinite if p puts mass where q has none."""
    _check_same_length(p, q)
    total = 0.0
    for a, b in zip(p, q, strict=True):
        if a <= 0:
            continue
        if b <= 0:
            return math.inf
        total += a * math.log(a / b)
    return total


def availability_bias(
    round_states: RoundStates,
    label_histograms: LabelHistograms,
    population: Iterable[str] | None = None,
) -> list[RoundBias]:
    """Per-round and cumulative availability bias (TV and KL to the population's label distribution).

    `population` defaults to every phone with a histogram. The cumulative figure counts a phone once per
    round it reported in — it is the mixture of every update aggregated so far, which is what the global
    model has been fitted to under FedAvg-style aggregation."""
    pop_ids = list(population) if population is not None else sorted(label_histograms)
    population_dist = label_distribution(label_histograms[cid] for cid in pop_ids)
    if population_dist is None:
        raise ValueError("the population has no labelled samples")
    cumulative = [0.0] * len(population_dist)
    results: list[RoundBias] = []
    for round_no in sorted(round_states):
        reporters = sorted(
            cid for cid, state in round_states[round_no].items() if _checked(state) == REPORTED
        )
        missing = [cid for cid in reporters if cid not in label_histograms]
        if missing:
            raise ValueError(f"no label histogram for reporting clients {missing}")
        round_dist = label_distribution(label_histograms[cid] for cid in reporters)
        for cid in reporters:
            for k, count in enumerate(label_histograms[cid]):
                cumulative[k] += float(count)
        cumulative_dist = label_distribution([cumulative])
        results.append(
            RoundBias(
                round_no=round_no,
                reporters=len(reporters),
                tv=_maybe(total_variation, round_dist, population_dist),
                kl=_maybe(kl_divergence, round_dist, population_dist),
                cumulative_tv=_maybe(total_variation, cumulative_dist, population_dist),
                cumulative_kl=_maybe(kl_divergence, cumulative_dist, population_dist),
            )
        )
    return results


def _maybe(
    distance: Callable[[Sequence[float], Sequence[float]], float],
    p: Sequence[float] | None,
    q: Sequence[float],
) -> float | None:
    return None if p is None else float(distance(p, q))


def _all_clients(round_states: RoundStates, extra: Iterable[str] = ()) -> list[str]:
    ids = set(extra)
    for states in round_states.values():
        ids.update(states)
    return sorted(ids)


def _check_state(state: str) -> None:
    if state not in _CODE_OF_STATE:
        raise ValueError(f"unknown availability state {state!r}; expected one of {STATES}")


def _checked(state: str) -> str:
    _check_state(state)
    return state


def _check_same_length(p: Sequence[float], q: Sequence[float]) -> None:
    if len(p) != len(q):
        raise ValueError(f"distributions differ in length: {len(p)} vs {len(q)}")
