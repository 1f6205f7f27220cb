"""The dashboard's client-influence section: ranking, heatmap, costs, attack success, exclusions and
exact leave-one-out runs, read from the rows the analysis wrote (views add it to snapshot.json)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from django.urls import reverse

from training.analysis.context import job_context
from training.analysis.influence import FISHER_NOTE
from training.fl.influence import InfluenceConfig
from training.models import AnalysisKind, AnalysisRun, AnalysisStatus, ClientInfluence, Job, RoundAnalysis
from training.web.charts import influence as charts
from training.web.charts.job import Figure

RUNS_SHOWN = 5
AGGREGATOR_CAVEAT = (
    "The estimate's removal term assumes the weighted mean of the updates; under {aggregator} an update "
    "the rule discounts (a boosted attacker's, say) still gets the large influence it would have on a "
    "plain average. The exact leave-one-out replay uses the job's own aggregator."
)
log = logging.getLogger(__name__)


def _score(row: dict[str, Any]) -> float:
    value = row.get("loss")
    return float(value if value is not None else row.get("loss_first_order") or 0.0)


def latest_exact(job: Job) -> AnalysisRun | None:
    return (
        job.analysis_runs.filter(kind=AnalysisKind.EXACT_LOO, status=AnalysisStatus.COMPLETED)
        .order_by("-finished_at", "-id")
        .first()
    )


def ranking(job: Job, rows: list[dict[str, Any]], exact: AnalysisRun | None) -> list[dict[str, Any]]:
    """Every participant at the last analysed round, most harmful first (then the untracked ones)."""
    last = max((r["round_number"] for r in rows), default=None)
    at_last = {r["device_id"]: r for r in rows if r["round_number"] == last}
    selected: defaultdict[int, int] = defaultdict(int)
    for r in rows:
        selected[r["device_id"]] += int(r["selected"])
    exact_clients = (exact.result.get("clients") or {}) if exact else {}
    out = []
    for p in job.participants.select_related("device"):
        row = at_last.get(p.device_id, {})
        out.append(
            {
                "device": p.device_id,
                "label": p.display_name,
                "tracked": bool(row),
                "loss": row.get("loss"),
                "loss_first_order": row.get("loss_first_order"),
                "accuracy": row.get("accuracy"),
                "params_norm": row.get("params_norm"),
                "truncated": row.get("truncated", False),
                "rounds_in": selected[p.device_id],
                "excluded": p.excluded,
                "excluded_reason": p.excluded_reason,
                "excluded_auto": p.excluded_auto,
                "excluded_round": p.excluded_round,
                "exact_loss": (exact_clients.get(str(p.device_id)) or {}).get("loss"),
                "exclude_url": reverse("training:participant-exclude", args=[job.pk, p.device_id]),
                "include_url": reverse("training:participant-include", args=[job.pk, p.device_id]),
            }
        )
    out.sort(key=lambda r: (not r["tracked"], _score(r) if r["tracked"] else 0.0, r["label"]))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank if row["tracked"] else None
    return out


def influence_section(job: Job) -> tuple[dict[str, Any], dict[str, Figure]]:
    """(the snapshot's "influence" dict, figures to add to snapshot["figures"])."""
    from training.analysis.loo import refusal  # noqa: PLC0415 - loo imports the task machinery

    try:
        context = job_context(job)
    except (ValueError, TypeError, KeyError) as exc:  # a data set or model the analysis cannot build
        return {"enabled": False, "reason": f"unavailable: {exc}", "ranking": [], "runs": []}, {}
    rows = list(
        ClientInfluence.objects.filter(job=job).values(
            "device_id",
            "round_number",
            "selected",
            "loss",
            "loss_first_order",
            "accuracy",
            "params_norm",
            "truncated",
        )
    )
    analyses = list(RoundAnalysis.objects.filter(job=job).order_by("round_number"))
    exact = latest_exact(job)
    ranked = ranking(job, rows, exact)
    exclusions = [e.snapshot() for e in job.exclusions.select_related("participant__device", "by")]
    runs = list(job.analysis_runs.select_related("requested_by")[:RUNS_SHOWN])
    costs = [(a.round_number, a.seconds, a.fisher_products) for a in analyses if a.influence]
    attack = [(a.round_number, a.attack_success_rate) for a in analyses if a.attack_success_rate is not None]
    section = {
        "enabled": context.influence_enabled,
        "reason": context.influence_reason,
        "fisher_note": FISHER_NOTE.format(samples=InfluenceConfig().fisher_samples),
        "aggregator_note": (
            AGGREGATOR_CAVEAT.format(aggregator=context.config.aggregator)
            if context.config.aggregator != "mean"
            else ""
        ),
        "budget": context.config.influence_budget,
        "last_round": max((r["round_number"] for r in rows), default=None),
        "ranking": ranked,
        "total_seconds": sum(s for _, s, _ in costs),
        "total_fisher_products": sum(p for _, _, p in costs),
        "costs": [{"round": r, "seconds": s, "fisher_products": p} for r, s, p in costs],
        "backdoor_test": context.config.backdoor_test,
        "attack": [{"round": r, "rate": v} for r, v in attack],
        "auto_exclude": context.config.auto_exclude,
        "exclusions": exclusions,
        "runs": [run.snapshot() for run in runs],
        "loo_url": reverse("training:job-loo", args=[job.pk]),
        "loo_refusal": refusal(job),
    }
    figures: dict[str, Figure] = {}
    if rows:
        tracked = [(str(r["device"]), r["label"]) for r in ranked if r["tracked"]]
        rounds = sorted({r["round_number"] for r in rows})
        values = {(str(r["device_id"]), r["round_number"]): _score(r) for r in rows}
        figures["influence_heatmap"] = charts.influence_heatmap_figure(tracked, rounds, values)
        figures["influence_bars"] = charts.influence_bars_figure([r for r in ranked if r["tracked"]])
    if costs:
        figures["influence_cost"] = charts.influence_cost_figure(costs)
    if context.config.backdoor_test:
        figures["attack_success"] = charts.attack_success_figure(attack, context.config.backdoor_target)
    if exact is not None:
        estimate = exact.result.get("estimate") or {}
        points = [
            (str(c.get("name")), float(estimate[cid]["loss"]), float(c["loss"]))
            for cid, c in (exact.result.get("clients") or {}).items()
            if (estimate.get(cid) or {}).get("loss") is not None and c.get("loss") is not None
        ]
        pearson = ((exact.result.get("agreement") or {}).get("loss") or {}).get("pearson")
        figures["loo_scatter"] = charts.loo_scatter_figure(points, pearson)
    return section, figures


def add_to_snapshot(job: Job, snapshot: dict[str, Any]) -> None:
    """Add the influence section and figures, and exclusion markers on the accuracy chart. A failure here
    must not blank the rest of the dashboard: it is logged and the section says it is unavailable."""
    try:
        section, figures = influence_section(job)
    except Exception as exc:  # noqa: BLE001
        log.exception("job %s: influence section failed", job.pk)
        snapshot["influence"] = {
            "enabled": False,
            "reason": f"unavailable ({type(exc).__name__})",
            "ranking": [],
        }
        return
    snapshot["influence"] = section
    snapshot.setdefault("figures", {}).update(figures)
    accuracy = snapshot["figures"].get("accuracy_loss")
    if accuracy is not None and section["exclusions"]:
        snapshot["figures"]["accuracy_loss"] = charts.add_exclusion_markers(accuracy, section["exclusions"])
