"""Submodels vs the full model on the platform: a virtual lab, real Celery workers, the ADB wire protocol.

    .venv/bin/python bench/submodel.py [--phones 20] [--items 100000] [--rounds 10] [--preset-rounds 5]

Runs, one after another on the same lab and data (recsys click logs, one user per phone, 16-dim
embeddings, same initial model), for `--rounds` rounds each: FedSubAvg on plain submodels (privacy
preset "none": each phone asks for exactly its own rows), FedAvg on the full CTR model, and FedSubAvg
with the platform's default privacy preset; then the other presets (`--presets`, default "whole_union")
for `--preset-rounds` rounds. Every figure is read from what the platform recorded (training/analysis/submodel.py):
bytes per phone per round are the platform's own transfer counts of the round's payloads (union when it
is sent + submodel + configs down; request + sparse update + result up), not counting the one-off
agent/shard push.

Prints JSON: per job the AUC / log-loss per round, bytes per phone per round down/up, the full model's
size and the reduction factors; the submodel-vs-full-model comparison (target, issue 7: ≥ 100× less per
phone per round); and the AUC / bytes / ε table of the privacy presets, whose decoy rows cost bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchLab, emit  # noqa: E402

# Twenty identical, always-available phones at host speed: the figures compare algorithms, not phones
# (the built-in catalogue's slow profiles would make every round wait for its slowest phone).
PROFILES = {"phones": [{"model": "Pixel 7", "manufacturer": "Google", "speed_factor": 1.0}]}


def job_config(args: argparse.Namespace, algorithm: str, rounds: int, privacy: str | None) -> dict[str, Any]:
    params = {"privacy": privacy} if privacy else {}
    return {
        "name": f"bench-submodel-{algorithm}{'-' + privacy if privacy else ''}",
        "dataset": "recsys",
        "dataset_params": {"num_items": args.items, "num_clients": args.phones},
        "data_seed": args.seed,
        "partition": "natural",
        "model": "ctr",
        "algorithm": algorithm,
        "algorithm_params": params,
        "rounds": rounds,
        # Every phone, every round: the lab's phones are equally fast (PROFILES), so nobody straggles, and
        # the long deadline never cuts a phone off mid-command.
        "clients_per_round": args.phones,
        "min_clients": max(1, round(0.8 * args.phones)),
        "over_selection": 1.0,
        "local_epochs": 1,
        "batch_size": 32,
        "lr": args.lr,
        "round_deadline_s": args.deadline,
        "seed": args.seed,
    }


def summarise(job: Any, wall_s: float) -> dict[str, Any]:
    from training.analysis.submodel import job_report  # noqa: PLC0415
    from training.models import RoundStatus  # noqa: PLC0415

    report = job_report(job) or {}
    report.pop("figures", None)
    committed = job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number")
    return {
        "job_status": job.status,
        "error": job.error or None,
        "wall_s": round(wall_s, 1),
        "auc_per_round": [round(r.metrics.get("auc", float("nan")), 4) for r in committed],
        "logloss_per_round": [round(r.metrics.get("logloss", float("nan")), 4) for r in committed],
        "round_wall_s": [round(r.wall_s, 1) for r in committed],
        "final_auc": round(committed.last().metrics["auc"], 4) if committed.exists() else None,
        "full_model_bytes": report.get("full_model_bytes"),
        "bytes_down_per_phone_round": _round(report.get("bytes_down_per_phone_round")),
        "bytes_up_per_phone_round": _round(report.get("bytes_up_per_phone_round")),
        "download_reduction_vs_full": _round(report.get("download_reduction"), 1),
        "submodel_bytes_down_per_phone_round": _round(report.get("submodel_bytes_down_per_phone_round")),
        "submodel_download_reduction_vs_full": _round(report.get("submodel_download_reduction"), 1),
        "upload_reduction_vs_full": _round(report.get("upload_reduction"), 1),
        "request_rows_mean": _round(
            sum(r["rows_mean"] for r in report.get("rounds", [])) / max(len(report.get("rounds", [])), 1), 1
        ),
        "privacy": report.get("privacy"),
    }


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--rounds", type=int, default=10, help="rounds of FedSubAvg (no privacy, default preset) and FedAvg"
    )
    parser.add_argument("--preset-rounds", type=int, default=5, help="rounds for the other privacy presets")
    parser.add_argument("--presets", default="whole_union")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    plan = [
        ("fedsubavg", args.rounds, "none"),
        ("fedavg_full", args.rounds, None),
        ("fedsubavg", args.rounds, "default"),
    ]
    plan += [("fedsubavg", args.preset_rounds, p) for p in args.presets.split(",") if p]
    jobs: dict[str, Any] = {}
    profiles = Path(tempfile.mkdtemp(prefix="fedfleet-submodel-")) / "profiles.json"
    profiles.write_text(json.dumps(PROFILES))
    with BenchLab(args.phones, seed=args.seed, profiles=profiles) as lab:
        for algorithm, rounds, privacy in plan:
            started = time.monotonic()
            job = lab.run_job(job_config(args, algorithm, rounds, privacy), timeout_s=3600)
            key = f"{algorithm}/{privacy}" if privacy else algorithm
            jobs[key] = summarise(job, time.monotonic() - started)
            print(json.dumps({key: jobs[key]}), file=sys.stderr, flush=True)  # survives a cut-short run
    submodel, baseline = jobs.get("fedsubavg/none", {}), jobs.get("fedavg_full", {})
    private = jobs.get("fedsubavg/default", {})
    presets = [
        {
            "preset": key.split("/", 1)[1],
            "rounds": len(s["auc_per_round"]),
            "final_auc": s["final_auc"],
            "bytes_down_per_phone_round": s["bytes_down_per_phone_round"],
            "submodel_bytes_down_per_phone_round": s["submodel_bytes_down_per_phone_round"],
            "bytes_up_per_phone_round": s["bytes_up_per_phone_round"],
            "request_rows_mean": s["request_rows_mean"],
            "epsilon_per_round": (s["privacy"] or {}).get("epsilon_per_round"),  # null = ∞
            "epsilon_permanent": (s["privacy"] or {}).get("epsilon_permanent"),
        }
        for key, s in jobs.items()
        if key.startswith("fedsubavg/")
    ]
    emit(
        {
            "benchmark": "submodel",
            "phones": args.phones,
            "items": args.items,
            "emb_dim": 16,
            "rounds": args.rounds,
            "preset_rounds": args.preset_rounds,
            "jobs": jobs,
            "submodel_vs_full_model": {
                "full_model_bytes": baseline.get("full_model_bytes") or submodel.get("full_model_bytes"),
                "submodel_bytes_down_per_phone_round": submodel.get("bytes_down_per_phone_round"),
                "submodel_bytes_up_per_phone_round": submodel.get("bytes_up_per_phone_round"),
                "download_reduction": submodel.get("download_reduction_vs_full"),
                "upload_reduction": submodel.get("upload_reduction_vs_full"),
                "fedsubavg_final_auc": submodel.get("final_auc"),
                "fedavg_full_final_auc": baseline.get("final_auc"),
                "fedavg_full_bytes_down_per_phone_round": baseline.get("bytes_down_per_phone_round"),
                "default_privacy_download_reduction": private.get("download_reduction_vs_full"),
                "default_privacy_upload_reduction": private.get("upload_reduction_vs_full"),
                "default_privacy_final_auc": private.get("final_auc"),
            },
            "privacy_presets": presets,
            "targets": {"submodel_download_reduction": 100, "submodel_upload_reduction": 100},
        }
    )


if __name__ == "__main__":
    main()
