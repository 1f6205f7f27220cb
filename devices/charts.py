"""Pure Plotly figure builders for the device pages: plain data in, a plotly Figure out (no ORM, no I/O).

The view turns the figure into JSON for plotly.js (served locally from static/vendor/).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from devices.models import STATUS_COLOURS, DeviceStatus

# The badge colours of static/css/app.css, for chart marks.
COLOUR_HEX = {
    "green": "#2f9e44",
    "blue": "#1c7ed6",
    "orange": "#f08c00",
    "red": "#e03131",
    "grey": "#868e96",
}
_LAYOUT = {
    "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
    "height": 280,
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "font": {"family": "system-ui, sans-serif", "size": 12},
}


@dataclass(frozen=True)
class BatteryPoint:
    at: dt.datetime
    level: int | None
    charging: bool | None


@dataclass(frozen=True)
class AvailabilitySpan:
    status: str
    start: dt.datetime
    end: dt.datetime | None  # None: still in this status


def battery_figure(points: Sequence[BatteryPoint], *, title: str = "Battery over time") -> go.Figure:
    """Battery level (%) as a line; points taken while charging are marked separately."""
    known = [p for p in points if p.level is not None]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[p.at for p in known],
            y=[p.level for p in known],
            mode="lines+markers",  # markers: a single sample (a phone seen once) is still visible
            name="level",
            line={"color": COLOUR_HEX["blue"], "width": 2},
            marker={"size": 4},
            hovertemplate="%{x|%Y-%m-%d %H:%M:%S}<br>%{y}%<extra></extra>",
        )
    )
    charging = [p for p in known if p.charging]
    figure.add_trace(
        go.Scatter(
            x=[p.at for p in charging],
            y=[p.level for p in charging],
            mode="markers",
            name="charging",
            marker={"color": COLOUR_HEX["green"], "size": 6, "symbol": "triangle-up"},
            hovertemplate="%{x|%Y-%m-%d %H:%M:%S}<br>%{y}% (charging)<extra></extra>",
        )
    )
    figure.update_layout(
        title={"text": title, "x": 0},
        yaxis={"title": "%", "range": [0, 100.5], "fixedrange": True},
        xaxis={"type": "date"},
        showlegend=bool(charging),
        **_LAYOUT,
    )
    if not known:
        _add_empty_note(figure, "No telemetry yet")
    return figure


def availability_timeline_figure(
    spans: Sequence[AvailabilitySpan], *, now: dt.datetime, title: str = "Availability"
) -> go.Figure:
    """Status intervals as horizontal bars on a time axis, one row per status (a Gantt-style timeline)."""
    figure = go.Figure()
    order = [s.value for s in DeviceStatus]
    for status in order:
        mine = [span for span in spans if span.status == status]
        if not mine:
            continue
        ends = [span.end or now for span in mine]
        label = DeviceStatus(status).label
        figure.add_trace(
            go.Bar(
                orientation="h",
                name=label,
                y=[label] * len(mine),
                base=[span.start for span in mine],
                # On a date axis a bar's length is a duration in milliseconds.
                x=[
                    max(0.0, (end - span.start).total_seconds() * 1000)
                    for span, end in zip(mine, ends, strict=True)
                ],
                marker={"color": COLOUR_HEX[STATUS_COLOURS[status]]},
                customdata=[
                    [span.start.isoformat(), end.isoformat()] for span, end in zip(mine, ends, strict=True)
                ],
                hovertemplate=f"{label}<br>%{{customdata[0]}} → %{{customdata[1]}}<extra></extra>",
            )
        )
    labels_present = [DeviceStatus(s).label for s in order if any(span.status == s for span in spans)]
    figure.update_layout(
        title={"text": title, "x": 0},
        barmode="overlay",
        xaxis={"type": "date"},
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(labels_present)), "fixedrange": True},
        showlegend=False,
        **_LAYOUT,
    )
    if not spans:
        _add_empty_note(figure, "No availability history yet")
    return figure


def _add_empty_note(figure: go.Figure, text: str) -> None:
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
