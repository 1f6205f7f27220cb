"""Heterogeneous data in the lab: FedAvg vs FedProx vs SCAFFOLD on Synthetic(1,1) and on digits with a
Dirichlet(0.1) label skew (ALGORITHMS.md §2–3), each on a virtual lab with real workers.

    .venv/bin/python bench/non_iid.py [--phones 30] [--rounds 20] [--per-round 10]

Workloads (same seeds for every algorithm of a workload, so only the algorithm differs):
- synthetic: Synthetic(α=1, β=1), natural partition (phone k holds device k's data: 30 phones), multinomial
  logistic regression, lr 0.01, batch 10, one local epoch (devices hold 50 to thousands of samples, so the
  local step counts differ a lot — the drift SCAFFOLD corrects); FedProx μ = 1 (the paper's best).
- digits: Dirichlet(α = 0.1) label skew over the same 30 phones, the 64-200-200-10 MLP, lr 0.1, batch 10,
  two local epochs; FedProx μ = 0.1.
Every phone is online throughout (the availability benchmark is bench/availability_bias.py).

Reported per job: rounds to each of the workload's target accuracies, final and best accuracy, the accuracy curve,
median round wall time, and the bytes moved per round (SCAFFOLD sends x and c down and Δy and Δc up, so
its payload is about twice FedAvg's: `payload_*_bytes_per_round` are the strategy's own tensor counts,
`wire_*_bytes_per_round` what the phones' transfers moved per round over the second half of the run, after
the agent and every phone's shard have been pushed; `wire_bytes_vs_fedavg` their ratio to FedAvg's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchLab, emit  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "config": {
            "dataset": "synthetic",
            "dataset_params": {"alpha": 1.0, "beta": 1.0},
            "partition": "natural",
            "model": "logreg",
            "lr": 0.01,
            "batch_size": 10,
            "local_epochs": 1,
        },
        "fedprox_mu": 1.0,
        "targets": (0.6, 0.7),
    },
    "digits": {
        "config": {
            "dataset": "digits",
            "partition": "dirichlet",
            "partition_param": 0.1,
            "model": "mlp",
            "lr": 0.1,
            "batch_size": 10,
            "local_epochs": 2,
        },
        "fedprox_mu": 0.1,
        "targets": (0.8, 0.85),
    },
}
ALGORITHMS = ("fedavg", "fedprox", "scaffold")


def job_config(args: argparse.Namespace, workload: str, algorithm: str) -> dict[str, Any]:
    spec = WORKLOADS[workload]
    config: dict[str, Any] = {
        "name": f"bench-non-iid-{workload}-{algorithm}",
        **spec["config"],
        "algorithm": algorithm,
        "rounds": args.rounds,
        "clients_per_round": args.per_round,
        "round_deadline_s": 120,
        "seed": args.seed,
        "data_seed": args.data_seed,
    }
    if algorithm == "fedprox":
        config["algorithm_params"] = {"mu": spec["fedprox_mu"]}
    return config


def summarise(job: Any, targets: tuple[float, ...]) -> dict[str, Any]:
    from training.models import RoundStatus  # noqa: PLC0415

    committed = list(job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number"))
    accuracies = [float(r.accuracy) for r in committed if r.accuracy is not None]
    to_target = {
        f"{target:g}": next((r.number for r in committed if (r.accuracy or 0.0) >= target), None)
        for target in targets
    }
    # Early rounds also push the agent and the data shards (each phone's once, when first selected); the
    # second half of the run moves little else than the models.
    later = committed[len(committed) // 2 :]

    def mean_of(values: list[float]) -> float | None:
        return round(statistics.fmean(values)) if values else None

    return {
        "job_status": job.status,
        "committed_rounds": len(committed),
        "abandoned_attempts": job.rounds.filter(status=RoundStatus.ABANDONED).count(),
        "rounds_to_target": to_target,  # first committed round at or above each target; None = not reached
        "final_accuracy": round(accuracies[-1], 4) if accuracies else None,
        "best_accuracy": round(max(accuracies), 4) if accuracies else None,
        "accuracy_per_round": [round(a, 4) for a in accuracies],
        "round_wall_median_s": round(statistics.median(r.wall_s for r in committed), 2)
        if committed
        else None,
        "payload_down_bytes_per_round": mean_of(
            [float(r.metrics["download_bytes"]) for r in committed if "download_bytes" in r.metrics]
        ),
        "payload_up_bytes_per_round": mean_of(
            [float(r.metrics["upload_bytes"]) for r in committed if "upload_bytes" in r.metrics]
        ),
        "wire_down_bytes_per_round": mean_of([float(r.bytes_down) for r in later]),
        "wire_up_bytes_per_round": mean_of([float(r.bytes_up) for r in later]),
        "scaffold_ci_resets": sum(int(r.metrics.get("scaffold_ci_resets", 0)) for r in committed),
        "job_wall_s": round((job.finished_at - job.started_at).total_seconds(), 1)
        if job.finished_at and job.started_at
        else None,
    }


def traffic_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Each algorithm's wire bytes per round (second half of the run) relative to FedAvg's."""
    base = results.get("fedavg", {})
    ratios: dict[str, float | None] = {}
    for name, result in results.items():
        if not isinstance(result, dict) or name == "fedavg":
            continue
        for way in ("down", "up"):
            ours, theirs = result.get(f"wire_{way}_bytes_per_round"), base.get(f"wire_{way}_bytes_per_round")
            ratios[f"{name}_{way}"] = round(ours / theirs, 2) if ours and theirs else None
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--workloads", default="synthetic,digits")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = parser.parse_args()

    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with BenchLab(args.phones, seed=args.seed) as lab:
        for workload in args.workloads.split(","):
            targets = WORKLOADS[workload]["targets"]
            results[workload] = {}
            for algorithm in args.algorithms.split(","):
                job = lab.run_job(job_config(args, workload, algorithm))
                results[workload][algorithm] = summarise(job, targets)
            results[workload]["wire_bytes_vs_fedavg"] = traffic_ratios(results[workload])
    emit(
        {
            "benchmark": "non_iid",
            "phones": args.phones,
            "rounds": args.rounds,
            "per_round": args.per_round,
            "seed": args.seed,
            "data_seed": args.data_seed,
            "workloads": {name: WORKLOADS[name] for name in args.workloads.split(",")},
            "results": results,
            "wall_s": round(time.monotonic() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
