"""Client influence and robust aggregation on a virtual lab with real workers (issue #6's benchmark).

    .venv/bin/python bench/influence.py [--phones 20] [--per-round 10] [--rounds 20] [--attack-rounds 10]

Two parts, each in its own throwaway lab (a child process per part, since each needs its own database and
phones), printed together as one JSON document:

1. `flip`: 20 phones, 3 of them label flippers chosen by the lab (`--misbehave 3 --behaviour
   label_flip`; the platform is not told — the lab's misbehaving.json is read only to score). A
   logistic-regression FedAvg job on digits with client influence on; then the platform's exact
   leave-one-out run on it: Pearson/Spearman between the estimated and exact loss influence, whether the
   three flippers rank lowest, the estimate's cost as a fraction of the exact replay's. Then the same job
   with automatic exclusion: final accuracy with vs without, and whom it excluded when.
2. `attack`: 20 phones, 1 model-replacement attacker (`backdoor:target=0,fraction=0.5+model_replacement`:
   a backdoor trained locally, its update boosted by γ = clients per round). One job per aggregator
   (mean, clip, median, trimmed_mean, krum, multi_krum) declaring the backdoor test: accuracy and attack
   success rate (the triggered test samples the model labels 0) per round, final and mean — the attacker
   is selected at random like everyone, so single-round figures depend on whether it was in that round
   (`attacker_rounds` says when) — and the attacker's rank on the test loss by the estimate and by an
   exact leave-one-out run of each job.

Every figure is read from the rows the platform recorded (RoundAnalysis, ClientInfluence, AnalysisRun).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchLab, emit  # noqa: E402

AGGREGATORS: dict[str, dict[str, Any]] = {
    "mean": {},
    "clip": {"max_norm": 1.0},
    "median": {},
    "trimmed_mean": {"beta": 0.1},
    "krum": {"num_byzantine": 1},
    "multi_krum": {"num_byzantine": 1, "num_selected": 5},
}
ATTACK = "backdoor:target=0,fraction=0.5+model_replacement"


def job_config(args: argparse.Namespace, name: str, rounds: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": "digits",
        "partition": "iid",
        "model": "logreg",
        "algorithm": "fedavg",
        "rounds": rounds,
        "clients_per_round": args.per_round,
        "local_epochs": 1,
        "batch_size": 10,
        "lr": 0.1,
        "seed": args.seed,
        "round_deadline_s": 120,
        "influence": "on",
        **extra,
    }


def wait_for_analysis(job: Any, timeout_s: float = 600) -> None:
    """run_job returns at the last commit; the last round's analysis follows in the training queue."""
    from training.models import RoundAnalysis  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while RoundAnalysis.objects.filter(job=job).count() < job.committed_rounds:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.pk}: analysis of its rounds not done after {timeout_s:.0f} s")
        time.sleep(0.5)


def misbehaving_devices(lab: BenchLab) -> dict[int, str]:
    """Device id -> behaviour, from the lab's own record (the platform never reads it)."""
    from devices.models import Device  # noqa: PLC0415

    record = json.loads((lab.work / "lab" / "misbehaving.json").read_text())
    return {Device.objects.get(name=serial).pk: behaviour for serial, behaviour in record.items()}


def influence_at_end(job: Any) -> dict[int, float]:
    from training.models import ClientInfluence  # noqa: PLC0415

    rows = ClientInfluence.objects.filter(job=job, round_number=job.committed_rounds)
    return {r.device_id: (r.loss if r.loss is not None else r.loss_first_order) for r in rows}


def ranks(values: dict[int, float]) -> dict[int, int]:
    return {device: rank for rank, device in enumerate(sorted(values, key=lambda d: values[d]), start=1)}


def round_trip(job: Any) -> dict[str, Any]:
    from training.models import RoundAnalysis  # noqa: PLC0415

    analyses = list(RoundAnalysis.objects.filter(job=job).order_by("round_number"))
    rounds = list(job.rounds.filter(status="committed").order_by("number"))
    return {
        "job": job.pk,
        "status": job.status,
        "rounds": job.committed_rounds,
        "final_accuracy": job.last_accuracy,
        "accuracy_per_round": [round(r.accuracy or 0.0, 4) for r in rounds],
        "influence_seconds_total": round(sum(a.seconds for a in analyses), 3),
        "influence_seconds_per_round_median": round(
            sorted(a.seconds for a in analyses)[len(analyses) // 2], 4
        )
        if analyses
        else None,
        "fisher_products_total": sum(a.fisher_products for a in analyses),
        "wall_seconds": round(sum(r.wall_s for r in rounds), 1),
    }


def exact_loo(job: Any, timeout_s: float = 1800) -> Any:
    from django.contrib.auth import get_user_model  # noqa: PLC0415

    from training.analysis.loo import request_exact_leave_one_out  # noqa: PLC0415
    from training.models import AnalysisRun  # noqa: PLC0415

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    run = request_exact_leave_one_out(job, owner)
    deadline = time.monotonic() + timeout_s
    while True:
        run = AnalysisRun.objects.get(pk=run.pk)
        if run.status in ("completed", "failed"):
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"exact leave-one-out run {run.pk} still {run.status}")
        time.sleep(1.0)


# ------------------------------------------------------------------------------------------------ parts


def flip_part(args: argparse.Namespace) -> dict[str, Any]:
    lab_args = ["--misbehave", str(args.flippers), "--behaviour", "label_flip"]
    with BenchLab(args.phones, seed=args.seed, lab_args=lab_args) as lab:
        flippers = set(misbehaving_devices(lab))
        plain = lab.run_job(job_config(args, "bench-influence", args.rounds))
        wait_for_analysis(plain)
        estimate = influence_at_end(plain)
        order = ranks(estimate)
        lowest = {d for d, r in order.items() if r <= len(flippers)}
        run = exact_loo(plain)
        result = run.result or {}
        agreement = (result.get("agreement") or {}).get("loss") or {}
        first_order = (result.get("agreement") or {}).get("loss_first_order") or {}
        mismatch = {int(c): v["replay_mismatch"] for c, v in (result.get("clients") or {}).items()}
        exact = {int(c): v["loss"] for c, v in (result.get("clients") or {}).items()}
        exact_order = ranks(exact)

        excluding = lab.run_job(
            job_config(
                args,
                "bench-influence-auto-exclude",
                args.rounds,
                auto_exclude=True,
                exclude_warmup_rounds=args.warmup,
                exclude_max_fraction=0.3,
            )
        )
        wait_for_analysis(excluding)
        from training.models import Exclusion  # noqa: PLC0415

        exclusions = [
            {
                "device": e.participant.device_id,
                "round": e.round_number,
                "flipper": e.participant.device_id in flippers,
            }
            for e in Exclusion.objects.filter(job=excluding, action="exclude").select_related("participant")
        ]
        return {
            "phones": args.phones,
            "per_round": args.per_round,
            "rounds": args.rounds,
            "flippers": sorted(flippers),
            "job": round_trip(plain),
            "flipper_ranks_estimate": sorted(order[d] for d in flippers if d in order),
            "flippers_rank_lowest": lowest == flippers,
            "flipper_ranks_exact": sorted(exact_order[d] for d in flippers if d in exact_order),
            "exact_loo": {
                "run_status": run.status,
                "error": run.error or None,
                "pearson_loss": agreement.get("pearson"),
                "spearman_loss": agreement.get("spearman"),
                "pearson_first_order": first_order.get("pearson"),
                "n": agreement.get("n"),
                "same_lowest": agreement.get("same_lowest"),
                "estimate_seconds": result.get("estimate_seconds"),
                "exact_seconds": result.get("exact_seconds"),
                "estimate_cost_fraction": result.get("cost_ratio"),
                "trainings": result.get("trainings"),
                "base_reproduction_error": result.get("base_reproduction_error"),
                "replay_mismatch_flippers_min": min(
                    (mismatch[d] for d in flippers if mismatch.get(d) is not None), default=None
                ),
                "replay_mismatch_honest_max": max(
                    (v for d, v in mismatch.items() if d not in flippers and v is not None), default=None
                ),
            },
            "auto_exclusion": {
                "accuracy_without": plain.last_accuracy,
                "accuracy_with": excluding.last_accuracy,
                "excluded": exclusions,
                "excluded_flippers": sum(e["flipper"] for e in exclusions),
                "warmup_rounds": args.warmup,
                "job": round_trip(excluding),
            },
        }


def attacker_rounds(job: Any, attacker: int) -> list[int]:
    """Rounds whose aggregate took the attacker's update (its selection is random, like everyone's)."""
    return sorted(
        job.client_results.filter(
            device_id=attacker, state="reported", round__status="committed"
        ).values_list("round__number", flat=True)
    )


def attack_part(args: argparse.Namespace) -> dict[str, Any]:
    lab_args = ["--misbehave", "1", "--behaviour", ATTACK]
    out: dict[str, Any] = {
        "phones": args.phones,
        "rounds": args.attack_rounds,
        "behaviour": ATTACK,
        "aggregators": {},
    }
    with BenchLab(args.phones, seed=args.seed, lab_args=lab_args) as lab:
        (attacker,) = misbehaving_devices(lab)
        from training.models import RoundAnalysis  # noqa: PLC0415

        for name, params in AGGREGATORS.items():
            job = lab.run_job(
                job_config(
                    args,
                    f"bench-attack-{name}",
                    args.attack_rounds,
                    aggregator=name,
                    aggregator_params=params,
                    backdoor_test=True,
                    backdoor_target=0,
                    backdoor_trigger_size=2,
                    backdoor_trigger_value=1.0,
                )
            )
            wait_for_analysis(job)
            rates = [
                r
                for r in RoundAnalysis.objects.filter(job=job)
                .order_by("round_number")
                .values_list("attack_success_rate", flat=True)
                if r is not None
            ]
            accuracies = [r.accuracy or 0.0 for r in job.rounds.filter(status="committed").order_by("number")]
            order = ranks(influence_at_end(job))
            run = exact_loo(job)
            exact = {int(c): v["loss"] for c, v in ((run.result or {}).get("clients") or {}).items()}
            agreement = ((run.result or {}).get("agreement") or {}).get("loss") or {}
            out["aggregators"][name] = {
                "params": params,
                "status": job.status,
                "attacker_rounds": attacker_rounds(job, attacker),
                "final_accuracy": job.last_accuracy,
                "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
                "min_accuracy": min(accuracies, default=None),
                "attack_success_final": rates[-1] if rates else None,
                "attack_success_mean": sum(rates) / len(rates) if rates else None,
                "attack_success_max": max(rates, default=None),
                "attack_success_per_round": [round(r, 4) for r in rates],
                "accuracy_per_round": [round(a, 4) for a in accuracies],
                # 1 = most harmful on the test loss; the estimate assumes the weighted mean
                "attacker_rank_estimate": order.get(attacker),
                "attacker_rank_exact": ranks(exact).get(attacker) if exact else None,
                "exact_loo_pearson": agreement.get("pearson"),
                "exact_loo_spearman": agreement.get("spearman"),
                "wall_seconds": round_trip(job)["wall_seconds"],
            }
    return out


def run_part(part: str, argv: list[str]) -> dict[str, Any]:
    """Each part in a child process: a BenchLab owns its database for the life of the process."""
    completed = subprocess.run(
        [sys.executable, __file__, "--part", part, *argv], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        return {"error": f"exit {completed.returncode}", "stderr": completed.stderr[-4000:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "flip", "attack"), default="all")
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--attack-rounds", type=int, default=10)
    parser.add_argument("--flippers", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.part == "flip":
        print(json.dumps(flip_part(args)))
        return
    if args.part == "attack":
        print(json.dumps(attack_part(args)))
        return
    passed = sys.argv[1:]
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "influence"}
    result["label_flip"] = run_part("flip", passed)
    result["label_flip"]["part_seconds"] = round(time.monotonic() - started, 1)
    attack_started = time.monotonic()
    result["model_replacement"] = run_part("attack", passed)
    result["model_replacement"]["part_seconds"] = round(time.monotonic() - attack_started, 1)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    result["targets"] = {"pearson_loss": 0.9, "flippers_rank_lowest": True, "total_seconds": 1200}
    emit(result)


if __name__ == "__main__":
    main()
