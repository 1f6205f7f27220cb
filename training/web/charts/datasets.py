"""Plotly figures of a stored data set's page, from its summary (training/fl/data_formats/summary.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.web.charts.job import Figure, _layout

TRAIN_COLOUR, TEST_COLOUR, CLIENT_COLOUR = "#42a5f5", "#ffa726", "#66bb6a"


def label_counts_figure(summary: Mapping[str, Any]) -> Figure:
    """Samples per class, training and test side by side."""
    counts = summary["label_counts"]
    classes = [str(k) for k in range(int(summary["num_classes"]))]
    data = [
        {
            "type": "bar",
            "name": "Training",
            "x": classes,
            "y": counts["train"],
            "marker": {"color": TRAIN_COLOUR},
        },
        {"type": "bar", "name": "Test", "x": classes, "y": counts["test"], "marker": {"color": TEST_COLOUR}},
    ]
    layout = _layout(
        "Samples per class", barmode="group", xaxis={"title": {"text": "class"}, "type": "category"}
    )
    layout["yaxis"] = {"title": {"text": "samples"}}
    return {"data": data, "layout": layout}


def client_sizes_figure(clients: Mapping[str, Any]) -> Figure:
    """How many clients hold how many training samples (integer bins: edges[i] <= size < edges[i+1])."""
    edges, counts = clients["histogram"]["edges"], clients["histogram"]["counts"]
    labels = [
        f"{edges[i]}" if edges[i + 1] - edges[i] == 1 else f"{edges[i]}–{edges[i + 1] - 1}"
        for i in range(len(counts))
    ]
    data = [{"type": "bar", "name": "Clients", "x": labels, "y": counts, "marker": {"color": CLIENT_COLOUR}}]
    layout = _layout(
        f"Training samples per client ({clients['count']} clients)",
        xaxis={"title": {"text": "samples on the client"}, "type": "category"},
    )
    layout["yaxis"] = {"title": {"text": "clients"}}
    layout["showlegend"] = False
    return {"data": data, "layout": layout}


def label_mix_figure(clients: Mapping[str, Any], num_classes: int) -> Figure:
    """Each listed client's samples by class, stacked: how non-IID the clients are at a glance."""
    mix = clients["label_mix"]
    names = [str(row["client"]) for row in mix]
    data = [
        {
            "type": "bar",
            "name": f"class {k}",
            "x": names,
            "y": [row["label_counts"][k] for row in mix],
        }
        for k in range(num_classes)
    ]
    shown = "" if len(mix) == clients["count"] else f" (the {len(mix)} largest)"
    layout = _layout(
        f"Label mix per client{shown}",
        barmode="stack",
        xaxis={"title": {"text": "client"}, "type": "category"},
    )
    layout["yaxis"] = {"title": {"text": "samples"}}
    layout["hovermode"] = "closest"
    return {"data": data, "layout": layout}


def dataset_figures(summary: Mapping[str, Any]) -> dict[str, Figure]:
    figures = {"labels": label_counts_figure(summary)}
    clients = summary.get("clients")
    if clients:
        figures["client_sizes"] = client_sizes_figure(clients)
        figures["label_mix"] = label_mix_figure(clients, int(summary["num_classes"]))
    return figures
