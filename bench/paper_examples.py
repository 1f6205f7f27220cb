"""Run the paper reproductions in examples/ on a throwaway platform and report their figures.

    .venv/bin/python bench/paper_examples.py [--rounds-cap 200] [examples/fedlaavg_n1000_e50.json ...]

Each example is a saved job config, runnable on a platform with `manage.py run_job --config F --wait`;
this script runs them on bench/harness.py's throwaway platform and reports per job: final accuracy, the
best, the oscillation (standard deviation of accuracy over the last 20 committed rounds, the measure the
compare page uses) and the rounds to 80 % / 90 %. Ends with one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO, BenchLab, emit  # noqa: E402

DEFAULT = ["fedavg_digits_iid_n100", "fedavg_digits_shards2_n100", "fedavg_digits_dir01_n100",
           "fedprox_digits_dir01_n100", "scaffold_digits_dir01_n100", "fedavg_n1000_e50", "fedlaavg_n1000_e50"]  # fmt: skip


def summary(job: Any) -> dict[str, Any]:
    from training.models import RoundStatus  # noqa: PLC0415

    accuracies = list(
        job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number").values_list("accuracy", flat=True)
    )
    tail = accuracies[-20:]

    def first(target: float) -> int | None:
        return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)

    return {
        "status": job.status,
        "rounds": len(accuracies),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "oscillation_last20": statistics.pstdev(tail) if len(tail) > 1 else None,
        "rounds_to_0.8": first(0.8),
        "rounds_to_0.9": first(0.9),
        "curve_every_10": accuracies[::10],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("examples", nargs="*", default=[f"examples/{n}.json" for n in DEFAULT])
    parser.add_argument(
        "--rounds-cap", type=int, default=0, help="run at most this many rounds (0: as saved)"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "paper_examples"}
    with BenchLab(phones=1, training_concurrency=2) as lab:
        for path in args.examples:
            config = json.loads((REPO / path).read_text())
            if args.rounds_cap:
                config["rounds"] = min(config["rounds"], args.rounds_cap)
            print(f"{path}: {config['rounds']} rounds", file=sys.stderr, flush=True)
            result[Path(path).stem] = summary(lab.run_job(config, timeout_s=3600, poll_s=0.5))
    emit(result)


if __name__ == "__main__":
    main()
