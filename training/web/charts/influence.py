"""Plotly figures for client influence and attacks, as plain dicts, from plain data (no Django).

Styled like training/web/charts/job.py (same layout helper), so they sit on the dashboard beside its figures.
Colours: harm is red, help is blue, on every influence figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.web.charts.job import Figure, _layout, _round_axis

HARM = "#e53935"
HELP = "#1e88e5"
EXCLUDED = "#6d4c41"
# Red (harms: negative loss influence) through white to blue (helps).
DIVERGING = [[0.0, HARM], [0.5, "#f5f5f5"], [1.0, HELP]]


def influence_heatmap_figure(
    clients: Sequence[tuple[str, str]], rounds: Sequence[int], values: Mapping[tuple[str, int], float | None]
) -> Figure:
    """Client × round cumulative influence on the test loss (the estimate ε_t at each round).

    clients: (client id, label) in display order (most harmful at the top); values[(client, round)].
    """
    z = [[values.get((cid, r)) for r in rounds] for cid, _ in clients]
    extent = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
    data = [
        {
            "type": "heatmap",
            "x": list(rounds),
            "y": [label for _, label in clients],
            "z": z,
            "zmid": 0,
            "zmin": -extent,
            "zmax": extent,
            "colorscale": DIVERGING,
            "colorbar": {"title": {"text": "Δ loss"}},
            "hoverongaps": False,
            "hovertemplate": "%{y}, round %{x}: %{z:+.4f}<extra>influence on test loss</extra>",
        }
    ]
    layout = _layout(
        "Influence per round (cumulative; red harms, blue helps)",
        xaxis=_round_axis(max(rounds, default=1)),
        yaxis={"title": {"text": "Phone"}, "type": "category", "autorange": "reversed", "automargin": True},
        hovermode="closest",
        height=max(380, 120 + 22 * len(clients)),
    )
    return {"data": data, "layout": layout}


def influence_bars_figure(ranking: Sequence[Mapping[str, Any]]) -> Figure:
    """Cumulative influence on the test loss per phone, sorted (most harmful first); excluded phones
    are outlined. ranking: dicts with label, loss, excluded."""
    # Excluded phones carry a ✕ in their label (text beside a negative bar would cover the axis labels).
    labels = [f"{r['label']} ✕" if r.get("excluded") else str(r["label"]) for r in ranking]
    values = [r.get("loss") for r in ranking]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "x": values,
            "y": labels,
            "marker": {
                "color": [HARM if (v or 0) < 0 else HELP for v in values],
                "line": {
                    "color": [EXCLUDED if r.get("excluded") else "rgba(0,0,0,0)" for r in ranking],
                    "width": 2,
                },
            },
            "customdata": ["excluded" if r.get("excluded") else "" for r in ranking],
            "hovertemplate": "%{y}: %{x:+.4f} %{customdata}<extra>cumulative influence</extra>",
            "name": "Influence on test loss",
        }
    ]
    layout = _layout(
        "Cumulative influence on the test loss (sorted)",
        xaxis={"title": {"text": "Loss without the phone − loss with it (< 0: harms)"}, "zeroline": True},
        yaxis={"type": "category", "autorange": "reversed", "automargin": True},
        hovermode="closest",
        showlegend=False,
        height=max(380, 120 + 22 * len(labels)),
    )
    return {"data": data, "layout": layout}


def attack_success_figure(points: Sequence[tuple[int, float]], target: int) -> Figure:
    """The declared backdoor's attack success rate after each round."""
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Attack success rate",
            "x": [r for r, _ in points],
            "y": [v for _, v in points],
            "line": {"color": HARM},
            "hovertemplate": "%{y:.1%}<extra>attack success</extra>",
        }
    ]
    layout = _layout(
        f"Backdoor attack success rate (triggered test samples classified as {target})",
        xaxis=_round_axis(max((r for r, _ in points), default=1)),
        yaxis={"title": {"text": "Attack success (%)"}, "range": [0, 1], "tickformat": ".0%"},
    )
    return {"data": data, "layout": layout}


def influence_cost_figure(points: Sequence[tuple[int, float, int]]) -> Figure:
    """Seconds and Fisher products the estimate cost per round. points: (round, seconds, products)."""
    data = [
        {
            "type": "bar",
            "name": "Seconds",
            "x": [r for r, _, _ in points],
            "y": [s for _, s, _ in points],
            "marker": {"color": "#ffa726"},
            "hovertemplate": "%{y:.3f} s<extra>influence</extra>",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Fisher products",
            "x": [r for r, _, _ in points],
            "y": [p for _, _, p in points],
            "yaxis": "y2",
            "line": {"color": "#5c6bc0"},
            "hovertemplate": "%{y}<extra>Fisher products</extra>",
        },
    ]
    layout = _layout(
        "Cost of the influence estimate per round",
        xaxis=_round_axis(max((r for r, _, _ in points), default=1)),
        yaxis={"title": {"text": "Seconds (s)"}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": "Fisher products"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "tickformat": ",d",
            "showgrid": False,
        },
    )
    return {"data": data, "layout": layout}


def loo_scatter_figure(points: Sequence[tuple[str, float, float]], pearson: float | None) -> Figure:
    """Estimated vs exact leave-one-out loss influence, one marker per phone. points: (label, est, exact)."""
    values = [v for _, e, x in points for v in (e, x)]
    low, high = (min(values), max(values)) if values else (-1.0, 1.0)
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "Phones",
            "x": [x for _, _, x in points],
            "y": [e for _, e, _ in points],
            "text": [label for label, _, _ in points],
            "marker": {"color": [HARM if x < 0 else HELP for _, _, x in points], "size": 9},
            "hovertemplate": "%{text}: exact %{x:+.4f}, estimate %{y:+.4f}<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "estimate = exact",
            "x": [low, high],
            "y": [low, high],
            "line": {"color": "#9e9e9e", "dash": "dash", "width": 1},
            "hoverinfo": "skip",
        },
    ]
    title = "Estimate vs exact leave-one-out (loss influence)"
    if pearson is not None:
        title += f" — Pearson r = {pearson:.3f}"
    layout = _layout(
        title,
        xaxis={"title": {"text": "Exact leave-one-out"}},
        yaxis={"title": {"text": "Fed-Influence estimate"}},
        hovermode="closest",
    )
    return {"data": data, "layout": layout}


def add_exclusion_markers(figure: Figure, exclusions: Sequence[Mapping[str, Any]]) -> Figure:
    """A dashed vertical line with a label per exclusion, after the round it happened (a copy)."""
    layout = dict(figure.get("layout", {}))
    shapes = list(layout.get("shapes", []))
    annotations = list(layout.get("annotations", []))
    for index, e in enumerate(exclusions):
        included = e.get("action") == "include"
        colour = "#43a047" if included else EXCLUDED
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "x0": e["round"],
                "x1": e["round"],
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"color": colour, "dash": "dot", "width": 1.5},
            }
        )
        annotations.append(
            {
                "x": e["round"],
                "xref": "x",
                "y": 1 - 0.07 * (index % 4),
                "yref": "paper",
                "text": ("+ " if included else "✕ ") + str(e.get("device_name", "")),
                "hovertext": str(e.get("reason", "")),
                "showarrow": False,
                "xanchor": "left",
                "font": {"size": 10, "color": colour},
            }
        )
    layout["shapes"], layout["annotations"] = shapes, annotations
    return {**figure, "layout": layout}
