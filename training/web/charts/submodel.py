"""Plotly figures of submodel jobs (FedSubAvg and its full-model baseline), as plain dicts.

Pure functions over plain rows (training/analysis/submodel.py builds them from the database): bytes each
phone moved per round against what the full model would have cost, the same per phone, and AUC per
round. Byte axes are logarithmic: the point of submodels is a gap of one or two orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.web.charts.job import Figure, _layout, _round_axis, byte_unit

DOWN_COLOUR, UP_COLOUR, FULL_COLOUR = "#26a69a", "#5c6bc0", "#e53935"


def _bytes_axis(values: Sequence[float], title: str) -> tuple[dict[str, Any], str, int]:
    unit, size = byte_unit(max([*values, 0]))
    return {"title": {"text": f"{title} ({unit}, log scale)"}, "type": "log"}, unit, size


def round_bytes_figure(rows: Sequence[Mapping[str, Any]], full_model_bytes: int) -> Figure:
    """Per committed round: mean bytes down/up per phone (request step included) and the full model."""
    labels = [str(r["round"]) for r in rows]
    down = [float(r["down_mean"]) for r in rows]
    up = [float(r["up_mean"]) for r in rows]
    yaxis, unit, size = _bytes_axis([*down, *up, float(full_model_bytes)], "Bytes per phone")
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "Download per phone (union + submodel)",
            "x": labels,
            "y": [b / size for b in down],
            "marker": {"color": DOWN_COLOUR},
            "hovertemplate": "%{y:.3f} " + unit + "<extra>down</extra>",
        },
        {
            "type": "bar",
            "name": "Upload per phone (request + sparse update)",
            "x": labels,
            "y": [b / size for b in up],
            "marker": {"color": UP_COLOUR},
            "hovertemplate": "%{y:.3f} " + unit + "<extra>up</extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Full model (each way)",
            "x": labels,
            "y": [full_model_bytes / size] * len(labels),
            "line": {"color": FULL_COLOUR, "dash": "dash"},
            "hovertemplate": "%{y:.3f} " + unit + "<extra>full model</extra>",
        },
    ]
    ratio = full_model_bytes / max(sum(down) / len(down), 1.0) if down else None
    title = "Bytes per phone per round vs the full model"
    if ratio is not None:
        title += f" — downloads {ratio:,.0f}× smaller"
    layout = _layout(
        title, barmode="group", xaxis={"title": {"text": "Round"}, "type": "category"}, yaxis=yaxis
    )
    return {"data": data, "layout": layout}


def phone_bytes_figure(rows: Sequence[Mapping[str, Any]], full_model_bytes: int) -> Figure:
    """Per phone: its total bytes down/up over the job against the full model for as many rounds."""
    labels = [str(r["phone"]) for r in rows]
    down = [float(r["down"]) for r in rows]
    up = [float(r["up"]) for r in rows]
    full = [float(full_model_bytes * r["rounds"]) for r in rows]
    yaxis, unit, size = _bytes_axis([*down, *up, *full], "Bytes over the job")
    data = [
        {
            "type": "bar",
            "name": "Downloaded",
            "x": labels,
            "y": [b / size for b in down],
            "marker": {"color": DOWN_COLOUR},
        },
        {
            "type": "bar",
            "name": "Uploaded",
            "x": labels,
            "y": [b / size for b in up],
            "marker": {"color": UP_COLOUR},
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "Full model, same rounds (each way)",
            "x": labels,
            "y": [b / size for b in full],
            "marker": {"color": FULL_COLOUR, "symbol": "line-ew-open", "size": 18},
        },
    ]
    for trace in data:
        trace["hovertemplate"] = "%{y:.3f} " + unit + "<extra>%{fullData.name}</extra>"
    layout = _layout(
        "Bytes per phone over the job vs the full model",
        barmode="group",
        xaxis={"title": {"text": "Phone"}, "type": "category"},
        yaxis=yaxis,
    )
    return {"data": data, "layout": layout}


def auc_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Test AUC (left axis) and log-loss (right axis) per committed round; round 0 = the initial model."""
    rounds = [int(r["round"]) for r in rows]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Test AUC",
            "x": rounds,
            "y": [r.get("auc") for r in rows],
            "line": {"color": "#1e88e5"},
            "hovertemplate": "%{y:.4f}<extra>AUC</extra>",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "Test log-loss",
            "x": rounds,
            "y": [r.get("logloss") for r in rows],
            "yaxis": "y2",
            "line": {"color": "#fb8c00", "dash": "dot"},
            "hovertemplate": "%{y:.4f}<extra>log-loss</extra>",
        },
    ]
    layout = _layout(
        "Click-through-rate model: test AUC and log-loss per round",
        xaxis=_round_axis(max(rounds, default=1)),
        yaxis={"title": {"text": "AUC"}},
        yaxis2={"title": {"text": "Log-loss"}, "overlaying": "y", "side": "right"},
    )
    return {"data": data, "layout": layout}


def report_figures(report: Mapping[str, Any]) -> dict[str, Figure]:
    """The submodel section's figures from analysis/submodel.py's job report."""
    full = report["full_model_bytes"]
    auc_rows = report["auc_rows"]
    return {
        "submodel_bytes": round_bytes_figure(report["rounds"], full),
        "submodel_phone_bytes": phone_bytes_figure(report["phones"], full),
        "submodel_auc": auc_figure(auc_rows),
    }
