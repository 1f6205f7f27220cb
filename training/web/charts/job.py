"""Plotly figures for the job pages, built as plain dicts (Plotly's figure JSON) by pure functions.

Every function takes round dicts shaped like `Round.snapshot()` and imports nothing from Django, so the
same figures can be built in a view, an API, a notebook or a test. The browser draws them with
`Plotly.react`; `uirevision` keeps the user's zoom when a figure is redrawn with new rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Figure = dict[str, Any]
RoundDict = Mapping[str, Any]

COMMITTED = "committed"
ABANDONED = "abandoned"
FINISHED_STATUSES = (COMMITTED, ABANDONED)
# Round phases in the order they happen; the stacked bars read bottom-up as the round went.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("select", "Select", "#9e9e9e"),
    ("push", "Push", "#42a5f5"),
    ("train", "Train", "#66bb6a"),
    ("pull", "Pull", "#ab47bc"),
    ("aggregate", "Aggregate", "#ffa726"),
)
BYTE_UNITS: tuple[tuple[str, int], ...] = (("GB", 10**9), ("MB", 10**6), ("kB", 10**3), ("B", 1))
FIGURE_HEIGHT_PX = 380
_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.01, "xanchor": "left"},
        "font": _FONT,
        "height": FIGURE_HEIGHT_PX,
        # The legend sits at the bottom of the whole figure, below the x-axis title, never on top of it.
        "margin": {"l": 60, "r": 60, "t": 50, "b": 110},
        "legend": {"orientation": "h", "yref": "container", "y": 0.01, "yanchor": "bottom", "x": 0},
        "hovermode": "x unified",
        "uirevision": title,
        **extra,
    }


def committed_rounds(rounds: Iterable[RoundDict]) -> list[RoundDict]:
    """The committed attempt of each round number, in round order (abandoned attempts have no metrics)."""
    by_number = {r["number"]: r for r in rounds if r.get("status") == COMMITTED}
    return [by_number[n] for n in sorted(by_number)]


def finished_attempts(rounds: Iterable[RoundDict]) -> list[RoundDict]:
    """Every committed or abandoned attempt in order: both cost time and bytes, so both are charted."""
    finished = [r for r in rounds if r.get("status") in FINISHED_STATUSES]
    return sorted(finished, key=lambda r: (r["number"], r.get("attempt", 1)))


def attempt_label(round_dict: RoundDict) -> str:
    """'7' for a round's first attempt, '7 (try 2)' for a retry after an abandoned attempt."""
    attempt = round_dict.get("attempt", 1)
    return str(round_dict["number"]) if attempt == 1 else f"{round_dict['number']} (try {attempt})"


def round_tick_step(last_round: int) -> int:
    """A whole-number tick spacing (1, 2, 5, 10, 20, ...) giving at most about ten ticks.

    Plotly's automatic ticks on a short run fall on halves (0.5, 1.5, ...), and a round 1.5 does not exist.
    """
    step = 1
    while last_round / step > 10:
        step = _next_nice(step)
    return step


def _next_nice(step: int) -> int:
    """1 → 2 → 5 → 10 → 20 → 50 → 100 ..."""
    digits = len(str(step)) - 1
    lead = step // 10**digits
    return (2 if lead == 1 else 5 if lead == 2 else 10) * 10**digits


def _round_axis(last_round: int) -> dict[str, Any]:
    return {
        "title": {"text": "Round"},
        "rangemode": "tozero",
        "tick0": 0,
        "dtick": round_tick_step(last_round),
    }


def accuracy_loss_figure(rounds: Sequence[RoundDict], *, headline: str = "accuracy") -> Figure:
    """Test accuracy (left axis, %) and test loss (right axis) of the global model after each round; a
    click-through-rate job (headline "AUC", Job.headline_metric) plots its test AUC instead of accuracy."""
    auc = headline == "AUC"
    done = committed_rounds(with_auc_as_accuracy(rounds) if auc else rounds)
    numbers = [r["number"] for r in done]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "AUC" if auc else "Accuracy",
            "x": numbers,
            "y": [r.get("accuracy") for r in done],
            "yaxis": "y",
            "line": {"color": "#1e88e5"},
            "hovertemplate": "%{y:.3f}<extra>AUC</extra>" if auc else "%{y:.1%}<extra>accuracy</extra>",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Loss",
            "x": numbers,
            "y": [r.get("loss") for r in done],
            "yaxis": "y2",
            "line": {"color": "#e53935", "dash": "dot"},
            "hovertemplate": "%{y:.4f}<extra>loss</extra>",
        },
    ]
    layout = _layout(
        "Test AUC and log-loss per round" if auc else "Test accuracy and loss per round",
        xaxis=_round_axis(max(numbers, default=1)),
        yaxis={"title": {"text": "AUC"}, "range": [0, 1], "tickformat": ".2f"}
        if auc
        else {"title": {"text": "Accuracy (%)"}, "range": [0, 1], "tickformat": ".0%"},
        yaxis2={
            "title": {"text": "Log-loss" if auc else "Loss (cross-entropy)"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            # Own ticks and no grid: ticks synced to the accuracy axis land on odd loss values.
            "tickmode": "auto",
            "showgrid": False,
        },
    )
    return {"data": data, "layout": layout}


def round_time_figure(rounds: Sequence[RoundDict]) -> Figure:
    """Where each round's time went: stacked phases, with the round's wall time as a line on top.

    The gap between the stack and the wall-time line is platform time outside the named phases.
    """
    attempts = finished_attempts(rounds)
    labels = [attempt_label(r) for r in attempts]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": name,
            "x": labels,
            "y": [float(r.get("timings", {}).get(key) or 0.0) for r in attempts],
            "marker": {"color": colour},
            "hovertemplate": "%{y:.2f} s<extra>" + name.lower() + "</extra>",
        }
        for key, name, colour in PHASES
    ]
    data.append(
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Wall time",
            "x": labels,
            "y": [float(r.get("timings", {}).get("wall") or 0.0) for r in attempts],
            "line": {"color": "#212121"},
            "text": ["abandoned" if r.get("status") == ABANDONED else "" for r in attempts],
            "hovertemplate": "%{y:.2f} s %{text}<extra>wall</extra>",
        }
    )
    layout = _layout(
        "Round time by phase",
        barmode="stack",
        xaxis={"title": {"text": "Round"}, "type": "category"},
        yaxis={"title": {"text": "Seconds (s)"}, "rangemode": "tozero"},
    )
    return {"data": data, "layout": layout}


def byte_unit(largest: float) -> tuple[str, int]:
    """The unit that shows `largest` bytes as a number ≥ 1 (B, kB, MB or GB; decimal, as networks count)."""
    for name, size in BYTE_UNITS:
        if largest >= size:
            return name, size
    return "B", 1


def bytes_figure(rounds: Sequence[RoundDict]) -> Figure:
    """Bytes sent to phones (model + config) and received from them (updates) per round attempt."""
    attempts = finished_attempts(rounds)
    labels = [attempt_label(r) for r in attempts]
    down = [int(r.get("bytes_down") or 0) for r in attempts]
    up = [int(r.get("bytes_up") or 0) for r in attempts]
    unit, size = byte_unit(max([*down, *up, 0]))
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "To phones (download)",
            "x": labels,
            "y": [b / size for b in down],
            "marker": {"color": "#26a69a"},
            "hovertemplate": "%{y:.3f} " + unit + "<extra>to phones</extra>",
        },
        {
            "type": "bar",
            "name": "From phones (upload)",
            "x": labels,
            "y": [b / size for b in up],
            "marker": {"color": "#5c6bc0"},
            "hovertemplate": "%{y:.3f} " + unit + "<extra>from phones</extra>",
        },
    ]
    data.extend(strategy_payload_traces(attempts, unit, size))
    layout = _layout(
        "Bytes moved per round",
        barmode="group",
        xaxis={"title": {"text": "Round"}, "type": "category"},
        yaxis={"title": {"text": f"Data ({unit})"}, "rangemode": "tozero"},
    )
    return {"data": data, "layout": layout}


# Round metrics in which a strategy reports the tensor bytes its algorithm moved (SCAFFOLD: model and
# control variate both ways, so twice FedAvg's).
PAYLOAD_METRICS = (
    ("download_bytes", "Model payload to phones (strategy)", "#00695c"),
    ("upload_bytes", "Update payload from phones (strategy)", "#283593"),
)


def strategy_payload_traces(attempts: Sequence[RoundDict], unit: str, size: int) -> list[dict[str, Any]]:
    """Lines for the payload bytes a strategy reports in its round metrics, when it reports them: the
    bars count every byte on the wire (including the agent and data shard pushed in round 1), the lines
    the algorithm's own tensors, so a doubled payload shows even when the bars are dominated by set-up."""
    traces = []
    for key, name, colour in PAYLOAD_METRICS:
        values = [(r.get("metrics") or {}).get(key) for r in attempts]
        if not any(isinstance(v, int | float) for v in values):
            continue
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": [attempt_label(r) for r in attempts],
                "y": [v / size if isinstance(v, int | float) else None for v in values],
                "line": {"color": colour, "dash": "dot"},
                "hovertemplate": "%{y:.3f} " + unit + "<extra>" + key + "</extra>",
            }
        )
    return traces


def rounds_to_target(rounds: Iterable[RoundDict], target: float) -> int | None:
    """The first committed round whose test accuracy reached `target`, or None if none did."""
    for r in committed_rounds(rounds):
        accuracy = r.get("accuracy")
        if accuracy is not None and accuracy >= target:
            return int(r["number"])
    return None


def final_accuracy(rounds: Iterable[RoundDict]) -> float | None:
    """Accuracy after the last committed round (None before the first one commits)."""
    done = committed_rounds(rounds)
    return done[-1].get("accuracy") if done else None


def with_auc_as_accuracy(rounds: Sequence[RoundDict]) -> list[RoundDict]:
    """The rounds of a click-through-rate job with their test AUC where the accuracy was, so that the
    compare page's curves and counts (rounds to target, final, best, oscillation) are about AUC."""
    return [{**r, "accuracy": (r.get("metrics") or {}).get("auc")} for r in rounds]


def compare_accuracy_figure(
    jobs: Sequence[tuple[str, Sequence[RoundDict]]], target: float | None = None, *, metric: str = "accuracy"
) -> Figure:
    """Accuracy curves of several jobs on one axis (`metric` "AUC": their AUC curves, with_auc_as_accuracy);
    with `target`, a dashed line marks the goal."""
    data = []
    for name, rounds in jobs:
        done = committed_rounds(rounds)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": [r["number"] for r in done],
                "y": [r.get("accuracy") for r in done],
                # The trace name comes from Plotly itself, so a job name is never spliced into markup.
                "hovertemplate": ("%{y:.3f}" if metric == "AUC" else "%{y:.1%}")
                + "<extra>%{fullData.name}</extra>",
            }
        )
    shapes = []
    if target is not None:
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "yref": "y",
                "y0": target,
                "y1": target,
                "line": {"color": "#757575", "dash": "dash", "width": 1},
            }
        )
    last_round = max((max(trace["x"], default=1) for trace in data), default=1)
    layout = _layout(
        "Test AUC per round" if metric == "AUC" else "Test accuracy per round",
        xaxis=_round_axis(last_round),
        yaxis={"title": {"text": "AUC"}, "range": [0, 1], "tickformat": ".2f"}
        if metric == "AUC"
        else {"title": {"text": "Accuracy (%)"}, "range": [0, 1], "tickformat": ".0%"},
        shapes=shapes,
    )
    return {"data": data, "layout": layout}


def dashboard_figures(rounds: Sequence[RoundDict], *, headline: str = "accuracy") -> dict[str, Figure]:
    """The three dashboard charts, keyed as the page's chart containers are named."""
    return {
        "accuracy_loss": accuracy_loss_figure(rounds, headline=headline),
        "round_time": round_time_figure(rounds),
        "bytes": bytes_figure(rounds),
    }
