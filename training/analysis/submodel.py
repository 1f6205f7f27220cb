"""The dashboard's section for submodel jobs (FedSubAvg and its full-model FedAvg baseline).

What it shows: bytes each phone moved per round (the request step included) against what the full model
would have cost, the same per phone over the job, test AUC per round, the index-privacy preset with its
per-round ε next to the bytes it costs, and what the server can see today.

Bytes come from `ClientResult.metrics` written by engine/client.py from the platform's own transfers:
`payload_bytes_down` (union for the request + the submodel + config) and `payload_bytes_up` (request +
sparse update + result). `bytes_down`/`bytes_up` on the result also count the one-off agent and data
shard pushes of a phone's first round, which say nothing about submodels. The full model's cost is the
size of the job's initial model file (safetensors of every weight), each way.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from training.fl.index_privacy import PRESETS, expected_request_rows, per_round_epsilon, permanent_epsilon
from training.jobs import storage
from training.jobs.config import SUBMODEL_ALGORITHMS, JobConfigError, parse_job_config
from training.models import ClientResult, ClientState, Job, RoundStatus

SERVER_VIEW = (
    "What the server can see today: the union of item ids, learned from the phones' real index sets in "
    "the clear (a private set union by secure aggregation is a later step); each phone's randomized "
    "request every round; and, in each upload, which requested rows it trained (non-zero counts). Index "
    "privacy protects the request only — hiding the uploads too needs secure aggregation."
)
BASELINE_VIEW = (
    "The full-model baseline sends every phone every row, so a download reveals nothing; its uploads are "
    "the whole model's delta, non-zero exactly on the rows the phone's data touched."
)

# The influence section of a submodel job's dashboard (training/analysis does not analyse them).
NO_INFLUENCE: dict[str, Any] = {
    "enabled": False,
    "reason": "client influence is estimated for FedAvg/FedProx jobs; submodel jobs are not analysed",
    "ranking": [],
    "runs": [],
    "exclusions": [],
}


def _epsilon(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 3)


def privacy_info(job: Job) -> dict[str, Any] | None:
    """The job's preset, its probabilities and ε; None for jobs that are not submodel jobs."""
    try:
        config = parse_job_config(job.config)
    except JobConfigError:
        return None
    if config.algorithm not in SUBMODEL_ALGORITHMS:
        return None
    if config.algorithm != "fedsubavg":
        return {"algorithm": config.algorithm, "preset": None, "server_view": BASELINE_VIEW}
    preset = PRESETS[str(config.algorithm_params.get("privacy", "default"))]
    return {
        "algorithm": config.algorithm,
        "preset": preset.name,
        "probabilities": {"p1": preset.p1, "p2": preset.p2, "p3": preset.p3, "p4": preset.p4},
        "epsilon_per_round": _epsilon(per_round_epsilon(preset)),  # None = ∞ (no deniability)
        "epsilon_permanent": _epsilon(permanent_epsilon(preset)),
        # Rows a phone with 300 real ids asks for out of a 6,000-id union (for the form's reader).
        "example_rows": round(expected_request_rows(300, 6000, preset)),
        "row_weight": str(config.algorithm_params.get("row_weight", "touched")),
        "server_view": SERVER_VIEW,
    }


def full_model_bytes(job: Job) -> int | None:
    path = storage.model_export_path(job.pk, 0)
    return path.stat().st_size if path.exists() else None


def _reported(job: Job) -> list[ClientResult]:
    return list(
        ClientResult.objects.filter(
            job=job, state=ClientState.REPORTED, round__status=RoundStatus.COMMITTED
        ).select_related("round", "device")
    )


def job_report(job: Job) -> dict[str, Any] | None:
    """Rows and summary numbers of the submodel section (web/charts/submodel.py draws them); None for
    other jobs."""
    privacy = privacy_info(job)
    full = full_model_bytes(job)
    if privacy is None or full is None:
        return None
    per_round: dict[int, list[ClientResult]] = defaultdict(list)
    per_phone: dict[str, list[ClientResult]] = defaultdict(list)
    for result in _reported(job):
        if "payload_bytes_down" not in result.metrics:
            continue
        per_round[result.round.number].append(result)
        per_phone[result.device.name].append(result)
    round_rows = [
        {
            "round": number,
            "down_mean": statistics.mean(r.metrics["payload_bytes_down"] for r in results),
            "up_mean": statistics.mean(r.metrics.get("payload_bytes_up", 0.0) for r in results),
            "rows_mean": statistics.mean(r.metrics.get("request_rows", 0.0) for r in results),
            # The submodel alone, without the request step's union (the same every round of a job).
            "submodel_down_mean": statistics.mean(
                r.metrics["payload_bytes_down"] - r.metrics.get("request_bytes_down", 0.0) for r in results
            ),
        }
        for number, results in sorted(per_round.items())
    ]
    phone_rows = [
        {
            "phone": name,
            "rounds": len(results),
            "down": sum(r.metrics["payload_bytes_down"] for r in results),
            "up": sum(r.metrics.get("payload_bytes_up", 0.0) for r in results),
        }
        for name, results in sorted(per_phone.items())
    ]
    committed = job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number")
    auc_rows = [
        {"round": r.number, "auc": r.metrics.get("auc"), "logloss": r.metrics.get("logloss")}
        for r in committed
    ]
    down_mean = statistics.mean(r["down_mean"] for r in round_rows) if round_rows else None
    up_mean = statistics.mean(r["up_mean"] for r in round_rows) if round_rows else None
    submodel_mean = statistics.mean(r["submodel_down_mean"] for r in round_rows) if round_rows else None
    return {
        "privacy": privacy,
        "full_model_bytes": full,
        "bytes_down_per_phone_round": down_mean,
        "bytes_up_per_phone_round": up_mean,
        "download_reduction": (full / down_mean) if down_mean else None,
        "submodel_bytes_down_per_phone_round": submodel_mean,
        "submodel_download_reduction": (full / submodel_mean) if submodel_mean else None,
        "upload_reduction": (full / up_mean) if up_mean else None,
        "last_auc": auc_rows[-1]["auc"] if auc_rows else None,
        "rounds": round_rows,
        "phones": phone_rows,
        "auc_rows": auc_rows,
    }
