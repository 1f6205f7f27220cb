"""Chart builders are pure: plain data in, a Plotly figure out."""

from __future__ import annotations

import datetime as dt

from devices.charts import (
    COLOUR_HEX,
    AvailabilitySpan,
    BatteryPoint,
    availability_timeline_figure,
    battery_figure,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_battery_figure_plots_levels_and_marks_charging() -> None:
    points = [
        BatteryPoint(T0, 80, False),
        BatteryPoint(T0 + dt.timedelta(minutes=1), None, None),  # a probe without battery data
        BatteryPoint(T0 + dt.timedelta(minutes=2), 78, True),
    ]
    figure = battery_figure(points)
    level, charging = figure.data
    assert list(level.y) == [80, 78]
    assert list(charging.y) == [78]
    assert tuple(figure.layout.yaxis.range) == (0, 100.5)
    assert not figure.layout.annotations


def test_empty_battery_figure_says_so() -> None:
    figure = battery_figure([])
    assert figure.layout.annotations[0].text == "No telemetry yet"


def test_availability_timeline_bars_per_status() -> None:
    now = T0 + dt.timedelta(hours=3)
    spans = [
        AvailabilitySpan("online", T0, T0 + dt.timedelta(hours=1)),
        AvailabilitySpan("offline", T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2)),
        AvailabilitySpan("online", T0 + dt.timedelta(hours=2), None),  # still online: ends now
    ]
    figure = availability_timeline_figure(spans, now=now)
    by_name = {trace.name: trace for trace in figure.data}
    assert set(by_name) == {"Online", "Offline"}
    assert list(by_name["Online"].x) == [3_600_000.0, 3_600_000.0]
    assert by_name["Offline"].marker.color == COLOUR_HEX["red"]
    assert figure.layout.xaxis.type == "date"


def test_figures_serialise_to_json() -> None:
    figure = availability_timeline_figure(
        [AvailabilitySpan("busy", T0, None)], now=T0 + dt.timedelta(minutes=5)
    )
    assert '"Busy"' in figure.to_json()
