"""The simulation backend against Flower's Simulation Engine, then alone at paper scale.

    .venv/bin/python bench/simulation.py [--rounds 20] [--skip-flower] [--large-rounds 5]

1. The same task on both (digits, the platform's 64-200-200-10 MLP, 20 clients, 10 per round, E = 1,
   B = 32, lr 0.05, IID; server-side test evaluation every round): FedFleet's simulation backend — a real
   job through Redis, Celery workers and the database (bench/harness.py's throwaway platform) — and
   Flower's Simulation Engine (`flwr[simulation]`, installed by this script into a throwaway venv under
   /tmp, never into the project's). Both train with training.fl.client.client_train.
2. FedFleet alone at 1,000 clients / 100 per round (digits) and 10,000 / 100 (Synthetic(1,1), 300 devices:
   digits has too few samples for 10,000 clients).

Round wall = time between consecutive round commits (everything: selection, batches, aggregation,
evaluation, checkpoint, the Celery hops); start-up = job created -> round 1 started. Influence analysis
is off (Flower computes none). Ends with one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, BenchLab, emit  # noqa: E402

FLOWER_VENV = Path("/tmp/fedfleet-bench-flwr-venv")
FLOWER_REQUIREMENT = "flwr[simulation]==1.42.0"
TASK = {
    "dataset": "digits",
    "model": "mlp",
    "partition": "iid",
    "local_epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "over_selection": 1.0,
    "influence": "off",
}


def ours(lab: BenchLab, name: str, clients: int, per_round: int, rounds: int, **extra: Any) -> dict[str, Any]:
    from training.models import RoundStatus  # noqa: PLC0415

    config = {
        **TASK,
        "name": name,
        "backend": "simulation",
        "sim_clients": clients,
        "clients_per_round": per_round,
        "rounds": rounds,
        **extra,
    }
    print(
        f"ours: {name} ({clients} clients, {per_round} per round, {rounds} rounds)",
        file=sys.stderr,
        flush=True,
    )
    job = lab.run_job(config, timeout_s=1800, poll_s=0.2)
    committed = list(job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number"))
    first = job.rounds.order_by("number", "attempt").first()
    ends = [job.created_at if first is None else first.started_at] + [r.finished_at for r in committed]
    walls = [(b - a).total_seconds() for a, b in zip(ends, ends[1:], strict=False)]
    startup = (first.started_at - job.created_at).total_seconds() if first else None
    return {
        "status": job.status,
        "rounds": len(committed),
        "startup_s": startup,
        "round_wall_median_s": statistics.median(walls) if walls else None,
        "round_wall_p95_s": sorted(walls)[int(0.95 * (len(walls) - 1))] if walls else None,
        "round_train_s_median": statistics.median(
            [
                sum(r.client_results.filter(state="reported").values_list("train_s", flat=True))
                for r in committed
            ]
        )
        if committed
        else None,
        "sim_wall_s_median": statistics.median([r.metrics.get("sim_wall_s", 0.0) for r in committed])
        if committed
        else None,
        "final_accuracy": job.last_accuracy,
    }


def dashboard(lab: BenchLab, rounds: int) -> dict[str, Any]:
    """A 1,000-client job of `rounds` rounds, then its dashboard snapshot (figures included) timed."""
    from training.web.views import snapshot_with_figures  # noqa: PLC0415

    run = ours(lab, "bench-sim-dashboard", 1000, 100, rounds)
    from training.models import Job  # noqa: PLC0415

    job = Job.objects.get(name="bench-sim-dashboard")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        snapshot = snapshot_with_figures(job)
        times.append(time.perf_counter() - started)
    return {
        "rounds": run["rounds"],
        "snapshot_s_median": statistics.median(times),
        "snapshot_bytes": len(json.dumps(snapshot)),
        "heatmap_rows": len(snapshot["figures"]["availability_heatmap"]["data"][0]["z"]),
    }


def flower_python() -> Path | None:
    """The throwaway venv's python with Flower, torch reached through a .pth (None: cannot install)."""
    python = FLOWER_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing {FLOWER_REQUIREMENT} into {FLOWER_VENV} ...", file=sys.stderr, flush=True)
        made = subprocess.run(
            [sys.executable.replace(".venv/bin/python", ".venv/bin/python"), "-m", "venv", str(FLOWER_VENV)]
        )
        if made.returncode != 0:
            return None
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", FLOWER_REQUIREMENT])
        if pip.returncode != 0:
            return None
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours_site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # torch (and scikit-learn for digits) from the project's venv, after Flower's own packages.
    (Path(site) / "zz_fedfleet_torch.pth").write_text(ours_site + "\n")
    return python


def flower(rounds: int) -> dict[str, Any]:
    python = flower_python()
    if python is None:
        return {"error": f"could not install {FLOWER_REQUIREMENT} here"}
    print("flower: 20 clients, 10 per round", file=sys.stderr, flush=True)
    started = time.perf_counter()
    run = subprocess.run(
        [str(python), str(REPO / "bench" / "flower_digits.py"), "--rounds", str(rounds)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if run.returncode != 0:
        return {"error": run.stderr[-2000:]}
    result = json.loads(run.stdout.strip().splitlines()[-1])
    walls = result["round_s"]
    # Flower's first round also starts its actors (Ray workers import torch): that is start-up, not a round.
    return {
        "startup_s": result["startup_s"] + (walls[0] if walls else 0.0),
        "first_round_s": walls[0] if walls else None,
        "round_wall_median_s": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "process_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--large-rounds", type=int, default=5)
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--dashboard-rounds", type=int, default=200, help="0 skips the dashboard timing")
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "simulation", "task": {**TASK, "clients": 20, "per_round": 10}}
    with BenchLab(phones=1, training_concurrency=2) as lab:
        # The first job on fresh workers also pays their per-process warm-up (torch's first calls, the
        # data set's first load): reported as the cold start, apart from the measured runs.
        cold = ours(lab, "bench-sim-warmup", 20, 10, 3)
        result["ours_cold_startup_s"] = cold["startup_s"]
        result["ours_20"] = ours(lab, "bench-sim-20", 20, 10, args.rounds)
        result["ours_1000"] = ours(lab, "bench-sim-1000", 1000, 100, args.large_rounds)
        result["ours_10000"] = ours(
            lab, "bench-sim-10000", 10_000, 100, args.large_rounds,
            dataset="synthetic", dataset_params={"num_devices": 300},
        )  # fmt: skip
        if args.dashboard_rounds:
            result["dashboard_1000"] = dashboard(lab, args.dashboard_rounds)
    if not args.skip_flower:
        result["flower_20"] = flower(args.rounds)
        theirs = result["flower_20"].get("round_wall_median_s")
        mine = result["ours_20"]["round_wall_median_s"]
        result["ratio_ours_to_flower"] = mine / theirs if mine and theirs else None
    result["targets"] = {
        "ratio_at_most": 0.33,
        "startup_under_s": 2.0,
        "round_1000_100_under_s": 1.0,
        "met": {
            "ratio": (result.get("ratio_ours_to_flower") or 99) <= 0.33,
            "startup": (result["ours_20"]["startup_s"] or 99) < 2.0,
            "round_1000_100": (result["ours_1000"]["round_wall_median_s"] or 99) < 1.0,
        },
    }
    emit(result)


if __name__ == "__main__":
    main()
