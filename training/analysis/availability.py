"""Availability as the platform recorded it, per job: who could take part in each round, who did, and how
biased the aggregated updates were — the Django side of training.fl.availability.

Raw material (nothing is sampled or simulated here):
- `Round.availability`: each participant's state when selection ran (idle, selected, offline, busy,
  ineligible, excluded) — engine.select_participants records it;
- `ClientResult.state`: what happened to each selected phone (reported, late, failed, rejected, dropped,
  or still in flight);
- `Participant.num_samples` and `label_counts`: each phone's data.

One cell per phone and round number. A retried round shows its committed attempt (or, while it runs or
after it was abandoned, its latest attempt). The cell is the phone's outcome if it was selected and leased,
else its state at selection; a phone chosen by the strategy but not leased (a probe found it gone, or
another job got it first) is "not leased". A state the engine may add later and this module does not know is shown as
"not recorded" rather than guessed.

Display states (training.web.charts.availability.AVAILABILITY_STATES) map onto training.fl.availability's core states for
the numbers: busy, not leased, ineligible and excluded phones were not available to the job, so they
count as offline;
a rejected update is a failed one. Participation counts every shown attempt; the bias only committed
rounds, since only their updates reached the model.

Availability bias "represented" set (ALGORITHMS.md §4): for FedAvg-style strategies the global step is
made of the updates aggregated this round, so the represented label mix is that of the round's reporters.
FedLaAvg steps with the mean of every phone's *latest* gradient, so from the round a phone first reports
its data stays represented; for it the represented set is every phone whose update was ever aggregated.
SCAFFOLD's step is the mean of this round's updates (its control variate carries older information, but
not the data mix), so it counts as "reporters".
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.fl import availability as core

# The heatmap and its snapshot stay small: older rounds are left out of the figure (never of the numbers).
MAX_HEATMAP_ROUNDS = 200
# ... and a job with more clients than this (a simulation's thousands) is drawn by groups of consecutive
# clients (client index order, the virtual lab's group rule), in the heatmap and the participation chart.
MAX_HEATMAP_ROWS = 50
# A group's cell: the furthest any of its clients got that round (someone reported > ... > all offline).
GROUP_PRECEDENCE = (
    "reported", "late", "failed", "rejected", "selected", "not_leased", "idle", "busy", "ineligible",
    "excluded", "offline",
)  # fmt: skip
DEVICE_PANEL_JOBS = 10
LATEST_BASIS_ALGORITHMS = frozenset({"fedlaavg"})

# ClientResult.state -> display state. In-flight phones are "selected" until they finish.
RESULT_DISPLAY = {
    "selected": "selected",
    "pushing": "selected",
    "training": "selected",
    "pulling": "selected",
    "reported": "reported",
    "late": "late",
    "failed": "failed",
    "dropped": "failed",
    "rejected": "rejected",
}
# Round.availability value -> display state, for phones without a ClientResult in the round.
SELECTION_DISPLAY = {
    "offline": "offline",
    "busy": "busy",
    "ineligible": "ineligible",
    "excluded": "excluded",
    "idle": "idle",
    "selected": "not_leased",  # chosen, but the lease failed: the phone went away or another job got it
}
DISPLAY_TO_CORE = {
    "offline": core.OFFLINE,
    "busy": core.OFFLINE,
    "not_leased": core.OFFLINE,
    "ineligible": core.OFFLINE,
    "excluded": core.OFFLINE,
    "idle": core.IDLE,
    "selected": core.SELECTED,
    "reported": core.REPORTED,
    "late": core.LATE,
    "failed": core.FAILED,
    "rejected": core.FAILED,
}
COMMITTED = "committed"


@dataclass(frozen=True)
class RoundRecord:
    """One attempt of one round as recorded: states at selection and the selected phones' outcomes,
    both keyed by client id (the device id as a string)."""

    number: int
    attempt: int
    status: str
    at_selection: Mapping[str, str]
    results: Mapping[str, str]


@dataclass(frozen=True)
class PhoneInfo:
    client_id: str
    label: str
    num_samples: int
    label_counts: Sequence[int]


@dataclass(frozen=True)
class AvailabilityReport:
    phones: list[PhoneInfo]
    rounds: list[int]  # the heatmap's columns (at most MAX_HEATMAP_ROUNDS, the latest)
    cells: list[list[str | None]]  # [phone][round] display state, None = not recorded
    participation: list[core.ParticipationRow]  # over every recorded round
    bias: list[core.RoundBias]  # committed rounds
    bias_basis: str  # "reporters" or "latest"
    hidden_rounds: int  # rounds left out of the heatmap
    group_size: int = 1  # clients per heatmap/participation row (1: one row per phone)

    def summary(self) -> dict[str, Any]:
        """A few numbers for the dashboard's text and for benchmarks."""
        tvs = [b.tv for b in self.bias if b.tv is not None]
        return {
            "basis": self.bias_basis,
            "rounds": len(self.bias),
            "mean_tv": statistics.fmean(tvs) if tvs else None,
            "max_tv": max(tvs) if tvs else None,
            "last_tv": tvs[-1] if tvs else None,
            "final_cumulative_tv": self.bias[-1].cumulative_tv if self.bias else None,
            "hidden_rounds": self.hidden_rounds,
            "group_size": self.group_size,
            "clients": sum(1 for _ in self.phones) * self.group_size
            if self.group_size > 1
            else len(self.phones),
        }


# --- pure: records -> grid and numbers ------------------------------------------------------------------
def cell_state(at_selection: str | None, result: str | None) -> str | None:
    """The display state of one phone in one round attempt (None: nothing recorded we can interpret)."""
    if result is not None:
        return RESULT_DISPLAY.get(result)
    if at_selection is None:
        return None
    return SELECTION_DISPLAY.get(at_selection)


def shown_attempts(records: Iterable[RoundRecord]) -> list[RoundRecord]:
    """One attempt per round number, in round order: the committed one, else the latest."""
    best: dict[int, RoundRecord] = {}
    for record in records:
        current = best.get(record.number)
        if current is None or _attempt_rank(record) > _attempt_rank(current):
            best[record.number] = record
    return [best[n] for n in sorted(best)]


def _attempt_rank(record: RoundRecord) -> tuple[bool, int]:
    return (record.status == COMMITTED, record.attempt)


def display_states(records: Sequence[RoundRecord]) -> dict[int, dict[str, str]]:
    """{round: {client_id: display state}} for the shown attempts (phones with nothing recorded omitted)."""
    grid: dict[int, dict[str, str]] = {}
    for record in shown_attempts(records):
        states: dict[str, str] = {}
        for cid in set(record.at_selection) | set(record.results):
            state = cell_state(record.at_selection.get(cid), record.results.get(cid))
            if state is not None:
                states[cid] = state
        grid[record.number] = states
    return grid


def core_states(display: Mapping[int, Mapping[str, str]]) -> dict[int, dict[str, str]]:
    return {r: {cid: DISPLAY_TO_CORE[s] for cid, s in states.items()} for r, states in display.items()}


def latest_represented(round_states: Mapping[int, Mapping[str, str]]) -> dict[int, dict[str, str]]:
    """FedLaAvg's represented set: in round r every phone reported in some round ≤ r counts as reported."""
    seen: set[str] = set()
    represented: dict[int, dict[str, str]] = {}
    for round_no in sorted(round_states):
        seen.update(cid for cid, s in round_states[round_no].items() if s == core.REPORTED)
        represented[round_no] = dict.fromkeys(seen, core.REPORTED)
    return represented


def bias_basis(algorithm: str) -> str:
    return "latest" if algorithm in LATEST_BASIS_ALGORITHMS else "reporters"


def build_report(
    records: Sequence[RoundRecord],
    phones: Sequence[PhoneInfo],
    *,
    algorithm: str,
    max_rounds: int = MAX_HEATMAP_ROUNDS,
    max_rows: int = MAX_HEATMAP_ROWS,
) -> AvailabilityReport:
    """Heatmap grid, participation and bias of one job from its recorded rounds (pure)."""
    display = display_states(records)
    ids = [p.client_id for p in phones]
    all_rounds = sorted(display)
    rounds = all_rounds[-max_rounds:] if max_rounds > 0 else []
    cells = [[display[r].get(cid) for r in rounds] for cid in ids]
    states = core_states(display)
    participation = core.participation(states, {p.client_id: p.num_samples for p in phones}, client_ids=ids)
    committed = {rec.number for rec in shown_attempts(records) if rec.status == COMMITTED}
    committed_states = {r: s for r, s in states.items() if r in committed}
    basis = bias_basis(algorithm)
    if basis == "latest":
        committed_states = latest_represented(committed_states)
    histograms = {p.client_id: list(p.label_counts) for p in phones if sum(p.label_counts) > 0}
    bias: list[core.RoundBias] = []
    if histograms and len({len(h) for h in histograms.values()}) == 1:
        try:
            bias = core.availability_bias(committed_states, histograms)
        except ValueError:
            bias = []  # a reporter without label counts (a job prepared before they were recorded)
    report = AvailabilityReport(
        phones=list(phones),
        rounds=rounds,
        cells=cells,
        participation=participation,
        bias=bias,
        bias_basis=basis,
        hidden_rounds=len(all_rounds) - len(rounds),
    )
    return grouped(report, max_rows) if len(phones) > max_rows else report


def group_cell(states: Iterable[str | None]) -> str | None:
    present = {s for s in states if s is not None}
    return next((s for s in GROUP_PRECEDENCE if s in present), None)


def grouped(report: AvailabilityReport, max_rows: int = MAX_HEATMAP_ROWS) -> AvailabilityReport:
    """The report with its rows merged into at most `max_rows` groups of consecutive clients: a cell is the
    furthest state any client of the group reached (group_cell); participation counts are summed. The bias
    figures are the job's, computed before grouping."""
    size = -(-len(report.phones) // max_rows)
    phones, cells, participation = [], [], []
    for start in range(0, len(report.phones), size):
        members = report.phones[start : start + size]
        rows = report.participation[start : start + size]
        label = f"clients {start}–{start + len(members) - 1}"
        phones.append(
            PhoneInfo(
                client_id=f"group-{start}",
                label=label,
                num_samples=sum(p.num_samples for p in members),
                label_counts=[sum(c) for c in zip(*(p.label_counts for p in members), strict=False)],
            )
        )
        cells.append([group_cell(column) for column in zip(*report.cells[start : start + size], strict=True)])
        participation.append(
            core.ParticipationRow(
                client_id=f"group-{start}",
                rounds_online=sum(r.rounds_online for r in rows),
                times_selected=sum(r.times_selected for r in rows),
                times_reported=sum(r.times_reported for r in rows),
                participation_share=sum(r.participation_share for r in rows),
                data_share=sum(r.data_share for r in rows),
            )
        )
    return dataclasses.replace(
        report, phones=phones, cells=cells, participation=participation, group_size=size
    )


# --- Django: load the records ---------------------------------------------------------------------------
def job_records(job: Any) -> list[RoundRecord]:
    """Every round attempt of a job with its availability snapshot and its phones' outcomes."""
    from training.jobs.simulation_config import decode_availability  # noqa: PLC0415
    from training.models import ClientResult, Round, sim_client_id  # noqa: PLC0415 - the pure part stays alone

    results: dict[int, dict[str, str]] = {}
    for round_id, device_id, index, state in ClientResult.objects.filter(job=job).values_list(
        "round_id", "device_id", "client_index", "state"
    ):
        cid = str(device_id) if device_id is not None else sim_client_id(index or 0)
        results.setdefault(round_id, {})[cid] = state
    return [
        RoundRecord(
            number=number,
            attempt=attempt,
            status=status,
            # A simulated round records everyone's state as one compact string (engine/simulation.py).
            at_selection=decode_availability(availability or {})
            or {str(k): str(v) for k, v in (availability or {}).items()},
            results=results.get(pk, {}),
        )
        for pk, number, attempt, status, availability in Round.objects.filter(job=job)
        .order_by("number", "attempt")
        .values_list("pk", "number", "attempt", "status", "availability")
    ]


def job_phones(job: Any) -> list[PhoneInfo]:
    return [
        PhoneInfo(
            client_id=p.client_id,
            label=p.display_name,
            num_samples=p.num_samples,
            label_counts=[int(c) for c in (p.label_counts or [])],
        )
        for p in job.participants.select_related("device").order_by("client_index")
    ]


def job_report(job: Any, *, max_rounds: int = MAX_HEATMAP_ROUNDS) -> AvailabilityReport:
    return build_report(job_records(job), job_phones(job), algorithm=job.algorithm, max_rounds=max_rounds)


# --- the device page's panel ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceJobRow:
    job_id: int
    job_name: str
    algorithm: str
    status: str
    rounds_recorded: int
    rounds_online: int
    times_selected: int
    times_reported: int
    data_share: float | None  # this phone's share of the job's samples
    participation_share: float | None  # its share of all updates the job aggregated


def device_participation(
    device_id: int, *, limit: int = DEVICE_PANEL_JOBS
) -> tuple[list[DeviceJobRow], list[tuple[str, dict[int, str]]]]:
    """This phone's participation in its latest `limit` jobs, and per job its display state by round
    (the device panel draws those as a jobs × rounds heatmap)."""
    from django.db.models import Sum  # noqa: PLC0415

    from training.models import Participant  # noqa: PLC0415

    participations = list(
        Participant.objects.filter(device_id=device_id)
        .select_related("job")
        .order_by("-job__created_at")[:limit]
    )
    rows: list[DeviceJobRow] = []
    heat_rows: list[tuple[str, dict[int, str]]] = []
    cid = str(device_id)
    for p in participations:
        job = p.job
        display = display_states(job_records_for_device(job, device_id))
        mine = {r: states[cid] for r, states in display.items() if cid in states}
        counts = core.participation(core_states({r: {cid: s} for r, s in mine.items()}), {cid: 1}, [cid])[0]
        totals = Participant.objects.filter(job=job).aggregate(
            samples=Sum("num_samples"), reports=Sum("rounds_reported")
        )
        rows.append(
            DeviceJobRow(
                job_id=job.pk,
                job_name=job.name,
                algorithm=job.algorithm,
                status=job.status,
                rounds_recorded=len(mine),
                rounds_online=counts.rounds_online,
                times_selected=counts.times_selected,
                times_reported=counts.times_reported,
                data_share=p.num_samples / totals["samples"] if totals["samples"] else None,
                participation_share=p.rounds_reported / totals["reports"] if totals["reports"] else None,
            )
        )
        heat_rows.append((f"#{job.pk} {job.name}"[:40], mine))
    return rows, heat_rows


def job_records_for_device(job: Any, device_id: int) -> list[RoundRecord]:
    """job_records narrowed to one phone (reads only that phone's results)."""
    from training.models import ClientResult, Round  # noqa: PLC0415

    results = dict(ClientResult.objects.filter(job=job, device_id=device_id).values_list("round_id", "state"))
    cid = str(device_id)
    records = []
    for pk, number, attempt, status, availability in (
        Round.objects.filter(job=job)
        .order_by("number", "attempt")
        .values_list("pk", "number", "attempt", "status", "availability")
    ):
        at_selection = {cid: str(availability[cid])} if availability and cid in availability else {}
        outcome = {cid: results[pk]} if pk in results else {}
        records.append(RoundRecord(number, attempt, status, at_selection, outcome))
    return records
