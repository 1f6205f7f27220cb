"""Availability figures (Plotly dicts, pure): the phone × round heatmap, participation per phone and the
availability bias per round — fed by training/analysis/availability.py's report."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from training.analysis.availability import MAX_HEATMAP_ROUNDS, AvailabilityReport
from training.web.charts.job import FIGURE_HEIGHT_PX, Figure, _layout, _round_axis

# Every state a phone can be in for one round of a job, as the heatmap shows it: (key, label, colour).
# The order is the colour scale's order; unavailable states first, then the selected phone's outcomes.
AVAILABILITY_STATES: tuple[tuple[str, str, str], ...] = (
    ("offline", "Offline", "#bdbdbd"),
    ("busy", "Busy (another job)", "#78909c"),
    ("not_leased", "Chosen, not leased (gone or taken)", "#b0bec5"),
    ("ineligible", "Ineligible (battery, charging)", "#ffe082"),
    ("excluded", "Excluded", "#5d4037"),
    ("idle", "Idle (available, not selected)", "#e3f2fd"),
    ("selected", "Selected (in progress)", "#64b5f6"),
    ("reported", "Reported (aggregated)", "#43a047"),
    ("late", "Late", "#fb8c00"),
    ("failed", "Failed or dropped", "#e53935"),
    ("rejected", "Rejected update", "#8e24aa"),
)
_STATE_CODE = {key: code for code, (key, _, _) in enumerate(AVAILABILITY_STATES)}
_STATE_LABEL = {key: label for key, label, _ in AVAILABILITY_STATES}
UNRECORDED_LABEL = "not recorded"
HEATMAP_ROW_PX = 16
HEATMAP_MAX_HEIGHT_PX = 1400


def discrete_colorscale(colours: Sequence[str]) -> list[list[Any]]:
    """A step colour scale: code k (of n) is drawn in colours[k] exactly, never a blend of neighbours.
    Use with zmin = -0.5 and zmax = n - 0.5 so each integer sits in the middle of its band."""
    n = len(colours)
    scale: list[list[Any]] = []
    for k, colour in enumerate(colours):
        scale.append([k / n, colour])
        scale.append([(k + 1) / n, colour])
    return scale


def availability_heatmap_figure(
    row_labels: Sequence[str],
    rounds: Sequence[int],
    cells: Sequence[Sequence[str | None]],
    *,
    title: str = "Availability per phone and round",
    row_axis_title: str = "Phone",
) -> Figure:
    """Phone × round grid of states (`cells[i][j]` is a key of AVAILABILITY_STATES, or None when nothing
    was recorded). A heatmap has no legend of its own, so one legend entry per state that occurs is added
    as an empty marker trace: the legend reads like a key to the colours."""
    if len(cells) != len(row_labels) or any(len(row) != len(rounds) for row in cells):
        raise ValueError("cells must have one row per label and one column per round")
    unknown = {state for row in cells for state in row if state is not None and state not in _STATE_CODE}
    if unknown:
        raise ValueError(f"unknown availability states {sorted(unknown)}")
    z = [[None if state is None else _STATE_CODE[state] for state in row] for row in cells]
    text = [[UNRECORDED_LABEL if state is None else _STATE_LABEL[state] for state in row] for row in cells]
    data: list[dict[str, Any]] = [
        {
            "type": "heatmap",
            "x": list(rounds),
            "y": list(row_labels),
            "z": z,
            "text": text,
            "zmin": -0.5,
            "zmax": len(AVAILABILITY_STATES) - 0.5,
            "colorscale": discrete_colorscale([colour for _, _, colour in AVAILABILITY_STATES]),
            "showscale": False,
            "xgap": 1,
            "ygap": 1,
            "hovertemplate": "%{y} · round %{x}<br>%{text}<extra></extra>",
            "name": "state",
            "showlegend": False,
        }
    ]
    present = {state for row in cells for state in row if state is not None}
    for key, label, colour in AVAILABILITY_STATES:
        if key in present:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "x": [None],
                    "y": [None],
                    "name": label,
                    "marker": {
                        "color": colour,
                        "symbol": "square",
                        "size": 12,
                        "line": {"width": 1, "color": "#9e9e9e"},
                    },
                    "hoverinfo": "skip",
                }
            )
    height = min(HEATMAP_MAX_HEIGHT_PX, max(FIGURE_HEIGHT_PX, 190 + HEATMAP_ROW_PX * len(row_labels)))
    layout = _layout(
        title,
        height=height,
        hovermode="closest",
        xaxis={**_round_axis(max(rounds, default=1)), "rangemode": "normal", "showgrid": False},
        yaxis={
            "title": {"text": row_axis_title},
            "type": "category",
            "autorange": "reversed",
            "automargin": True,
        },
        plot_bgcolor="#ffffff",
    )
    return {"data": data, "layout": layout}


def participation_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per phone: how often it was selected and how many of its updates were aggregated, against the
    number of aggregated updates its share of the data would give it (◆). A phone whose green bar stands
    far above its ◆ is over-represented in the model; far below, under-represented.

    Each row: label, times_selected, times_reported, data_share (0..1)."""
    labels = [str(r["label"]) for r in rows]
    reported = [int(r["times_reported"]) for r in rows]
    total_reports = sum(reported)
    fair = [float(r["data_share"]) * total_reports for r in rows]
    data = [
        {
            "type": "bar",
            "name": "Selected",
            "x": labels,
            "y": [int(r["times_selected"]) for r in rows],
            "marker": {"color": "#90caf9"},
            "hovertemplate": "%{y} rounds<extra>selected</extra>",
        },
        {
            "type": "bar",
            "name": "Updates aggregated",
            "x": labels,
            "y": reported,
            "marker": {"color": "#43a047"},
            "hovertemplate": "%{y} updates<extra>aggregated</extra>",
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "Fair share by data",
            "x": labels,
            "y": fair,
            "marker": {"color": "#212121", "symbol": "diamond", "size": 9},
            "customdata": [float(r["data_share"]) for r in rows],
            "hovertemplate": "%{y:.1f} updates (%{customdata:.1%} of the data)<extra>fair share</extra>",
        },
    ]
    layout = _layout(
        "Participation per phone against its share of the data",
        barmode="group",
        xaxis={"title": {"text": "Phone"}, "type": "category", "automargin": True},
        yaxis={"title": {"text": "Rounds"}, "rangemode": "tozero"},
    )
    return {"data": data, "layout": layout}


BIAS_BASIS_NOTES = {
    "reporters": "represented = the phones whose updates the round aggregated",
    "latest": "represented = every phone's latest update (FedLaAvg keeps them all)",
}


def availability_bias_figure(bias: Sequence[Mapping[str, Any]], *, basis: str = "reporters") -> Figure:
    """Total-variation distance between the label distribution the aggregated updates represented and
    the whole population's, per committed round and cumulatively (0 = unbiased, 1 = disjoint labels).

    Each row: round_no, tv, cumulative_tv (None where nothing was aggregated)."""
    rounds = [int(b["round_no"]) for b in bias]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "This round",
            "x": rounds,
            "y": [b.get("tv") for b in bias],
            "line": {"color": "#e53935"},
            "hovertemplate": "%{y:.3f}<extra>this round</extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Cumulative",
            "x": rounds,
            "y": [b.get("cumulative_tv") for b in bias],
            "line": {"color": "#212121", "dash": "dash"},
            "hovertemplate": "%{y:.3f}<extra>cumulative</extra>",
        },
    ]
    note = BIAS_BASIS_NOTES.get(basis, basis)
    layout = _layout(
        f"Availability bias (TV distance to the population's labels)<br><sup>{note}</sup>",
        xaxis=_round_axis(max(rounds, default=1)),
        yaxis={"title": {"text": "TV distance"}, "rangemode": "tozero"},
    )
    layout["uirevision"] = "availability-bias"
    return {"data": data, "layout": layout}


def report_figures(report: AvailabilityReport) -> dict[str, Figure]:
    """The dashboard's availability figures, keyed like its chart containers (`chart-<key>`)."""
    labels = {p.client_id: p.label for p in report.phones}
    title = "Availability per phone and round"
    if report.hidden_rounds:
        title += f" (last {len(report.rounds)} rounds)"
    participation_rows = [
        {**dataclasses.asdict(row), "label": labels.get(row.client_id, row.client_id)}
        for row in report.participation
    ]
    return {
        "availability_heatmap": availability_heatmap_figure(
            [p.label for p in report.phones], report.rounds, report.cells, title=title
        ),
        "participation": participation_figure(participation_rows),
        "availability_bias": availability_bias_figure(
            [dataclasses.asdict(b) for b in report.bias], basis=report.bias_basis
        ),
    }


def device_heatmap_figure(heat_rows: Sequence[tuple[str, Mapping[int, str]]]) -> Figure:
    """One phone in each of its jobs, round by round (the device page's panel)."""
    rounds = sorted({r for _, states in heat_rows for r in states})[-MAX_HEATMAP_ROUNDS:]
    return availability_heatmap_figure(
        [label for label, _ in heat_rows],
        rounds,
        [[states.get(r) for r in rounds] for _, states in heat_rows],
        title="This phone in each job, round by round",
        row_axis_title="Job",
    )
