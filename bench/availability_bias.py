"""Availability bias in the lab: FedAvg vs FedLaAvg on digits when phones holding different classes are
online in turns (ALGORITHMS.md §4, the FedLaAvg experiment scaled to a 2-core lab).

    .venv/bin/python bench/availability_bias.py [--phones 20] [--per-round 5] [--rounds 36]
                                                [--phase-rounds 5] [--turns rounds|time]

Setup
- digits, logistic regression (the paper's model), label-sorted shards with one shard per phone, so each
  phone holds one or two classes (`shards`, k = 1).
- The lab runs `--scenario alternating --groups 2`: group 0 online, then group 1, and so on, each turn
  lasting E = `phase_rounds` rounds (the paper's period E). By default (`--turns rounds`) the scenario's
  period is set far beyond the run and the benchmark ends each turn itself (SIGUSR2 to the lab) once E
  more rounds have committed, so a turn is E rounds whatever the machine's load. With `--turns time` the
  period is E × round_s seconds of lab time instead (round_s measured first unless given).
- Groups follow the lab's rule (phone i of N is in group floor(2i/N)). The benchmark computes the job's
  partition (the same function and seed the engine uses), ranks the clients by their mean label, and
  registers the phones so that the engine's client order (registration order) gives the lower-class half
  of the shards to group 0. It then reads the shards back from the job and reports how well they align.
- The lab holds every phone online until the job has chosen its phones (all of them), then the scenario
  starts (SIGUSR1). Each algorithm runs in a fresh lab with the same seeds, the same phones and shards.
- Same local work: FedAvg runs one local epoch (8 steps of batch 10 on a 72-sample shard); FedLaAvg runs
  `local_steps` = 8. Same lr, batch, clients per round (and the platform's 1.3× over-selection).
- A turn change strands the phones that were selected from the group going away, so rounds across a turn
  often fail; a round commits with `--min-reports` (3 of the goal 5) reports, and when the engine pauses a
  job after five abandoned attempts in a row the benchmark resumes it as an operator would (counted in
  `operator_resumes`). Phones count as back once a health probe sees them (`--probe-s`, 2 s).
- With `--turns time` the rounds per turn depend on the machine's speed at the time (other work on the
  machine makes rounds slower and turns shorter). Without `--round-s` the benchmark first measures it: a
  5-round FedAvg run of the same job with every phone online, median seconds from one round's start to
  the next. Either way the realised turns are reported (`realised_phases`: [group online, rounds]).

Reported per algorithm (from the rows the platform recorded): final accuracy; the mean, standard deviation
and peak-to-peak of the accuracy over the last full cycle (2 × phase_rounds committed rounds) — the
oscillation; the availability bias from training.analysis.availability (mean TV distance per round, on the
algorithm's own basis: this round's reporters for FedAvg, every phone's latest update for FedLaAvg, plus
the reporters basis for both); and the realised phases (which group was online, for how many rounds).
Expected (the paper): FedAvg oscillates toward whichever half is online; FedLaAvg is ahead and steadier.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchLab, emit  # noqa: E402

GROUPS = 2


def client_groups(phones: int, seed: int, data_seed: int) -> tuple[list[int], list[float]]:
    """Group (0 = lower classes) of each client index, as the engine will partition the data."""
    import numpy as np  # noqa: PLC0415

    from training.fl.datasets import load_dataset  # noqa: PLC0415
    from training.fl.partition import partition_dataset  # noqa: PLC0415

    splits = load_dataset("digits", seed=data_seed)
    parts = partition_dataset("shards", splits.train, phones, seed=seed, shards_per_client=1)
    labels = np.asarray(splits.train.labels)
    means = [float(labels[part].mean()) for part in parts]
    ranked = sorted(range(phones), key=lambda c: (means[c], c))
    lower = set(ranked[: phones // 2])
    return [0 if c in lower else 1 for c in range(phones)], means


def registration_order(groups: list[int]) -> list[int]:
    """Lab phone indices in registration order: client c gets the next free phone of its group
    (phones 0..N/2-1 are group 0 under the lab's floor(2i/N) rule, the rest group 1)."""
    phones = len(groups)
    free = {0: list(range(phones // 2)), 1: list(range(phones // 2, phones))}
    return [free[g].pop(0) for g in groups]


def job_config(args: argparse.Namespace, algorithm: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": f"bench-availability-{algorithm}",
        "dataset": "digits",
        "partition": "shards",
        "partition_param": 1,
        "model": "logreg",
        "algorithm": algorithm,
        "rounds": args.rounds,
        "clients_per_round": args.per_round,
        "local_epochs": 1,
        "batch_size": 10,
        "lr": args.lr,
        "round_deadline_s": 60,
        # A round that straddles a turn loses the phones going away; commit it with the rest.
        "min_clients": args.min_reports,
        "seed": args.seed,
        "data_seed": args.data_seed,
    }
    if algorithm == "fedlaavg":
        config["algorithm_params"] = {"local_steps": args.local_steps}
    return config


def accuracy_stats(accuracies: list[float]) -> dict[str, float | None]:
    if not accuracies:
        return {"mean": None, "std": None, "peak_to_peak": None, "min": None, "max": None}
    return {
        "mean": round(statistics.fmean(accuracies), 4),
        "std": round(statistics.pstdev(accuracies), 4),
        "peak_to_peak": round(max(accuracies) - min(accuracies), 4),
        "min": round(min(accuracies), 4),
        "max": round(max(accuracies), 4),
    }


def realised_phases(report: Any, groups_by_client: dict[str, int]) -> list[list[Any]]:
    """[[group online, rounds], ...]: per round the group most of whose phones were available."""
    runs: list[list[Any]] = []
    for j, _ in enumerate(report.rounds):
        online = [0, 0]
        for i, phone in enumerate(report.phones):
            state = report.cells[i][j]
            if state is not None and state not in ("offline", "busy", "not_leased", "ineligible", "excluded"):
                online[groups_by_client[phone.client_id]] += 1
        group: Any = 0 if online[0] > online[1] else 1 if online[1] > online[0] else "both"
        if runs and runs[-1][0] == group:
            runs[-1][1] += 1
        else:
            runs.append([group, 1])
    return runs


def summarise(job: Any, groups: list[int], cycle: int) -> dict[str, Any]:
    from training.analysis import availability as availability_report  # noqa: PLC0415
    from training.models import RoundStatus  # noqa: PLC0415

    committed = list(job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number"))
    accuracies = [float(r.accuracy) for r in committed if r.accuracy is not None]
    report = availability_report.job_report(job)
    records, phones = availability_report.job_records(job), availability_report.job_phones(job)
    as_reporters = availability_report.build_report(records, phones, algorithm="fedavg").summary()
    participants = list(job.participants.order_by("client_index"))
    groups_by_client = {str(p.device_id): groups[p.client_index] for p in participants}
    # How well the shards line up with the groups: share of group 0's samples in classes 0-4.
    low = [sum(p.label_counts[:5]) for p in participants]
    total = [sum(p.label_counts) for p in participants]
    g0 = [c for c in range(len(participants)) if groups[c] == 0]
    g1 = [c for c in range(len(participants)) if groups[c] == 1]
    walls = [r.wall_s for r in committed]
    return {
        "job_status": job.status,
        "committed_rounds": len(committed),
        "abandoned_attempts": job.rounds.filter(status=RoundStatus.ABANDONED).count(),
        "phones_in_job": len(participants),
        "final_accuracy": round(accuracies[-1], 4) if accuracies else None,
        "best_accuracy": round(max(accuracies), 4) if accuracies else None,
        "last_cycle": accuracy_stats(accuracies[-cycle:]),
        "accuracy_per_round": [round(a, 4) for a in accuracies],
        "availability_bias": {k: _rounded(v) for k, v in report.summary().items()},
        "availability_bias_reporters_basis": {k: _rounded(v) for k, v in as_reporters.items()},
        "realised_phases": realised_phases(report, groups_by_client),
        "group_alignment": {
            "group0_share_in_classes_0_4": round(
                sum(low[c] for c in g0) / max(1, sum(total[c] for c in g0)), 3
            ),
            "group1_share_in_classes_0_4": round(
                sum(low[c] for c in g1) / max(1, sum(total[c] for c in g1)), 3
            ),
        },
        "round_wall_median_s": round(statistics.median(walls), 2) if walls else None,
        "job_wall_s": round((job.finished_at - job.started_at).total_seconds(), 1)
        if job.finished_at and job.started_at
        else None,
    }


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


CALIBRATION_ROUNDS = 5


def calibrate(args: argparse.Namespace, order: list[int]) -> dict[str, Any]:
    """Seconds per round of this job on this machine now: a short FedAvg run with every phone online.
    Round 1 also pushes the agent and the shards, so it is left out."""
    with BenchLab(
        args.phones,
        seed=args.seed,
        extra_env={"FEDFLEET_PROBE_INTERVAL_S": str(args.probe_s)},
        register_order=order,
    ) as lab:
        from training.models import RoundStatus  # noqa: PLC0415 - Django is set up by the lab

        config = {**job_config(args, "fedavg"), "name": "bench-availability-calibration"}
        job = lab.run_job({**config, "rounds": CALIBRATION_ROUNDS})
        walls = [r.wall_s for r in job.rounds.filter(status=RoundStatus.COMMITTED, number__gt=1)]
        # start-to-start: the wall time plus the gap until the next round is selected
        starts = sorted(job.rounds.values_list("started_at", flat=True))
    gaps = [(b - a).total_seconds() for a, b in zip(starts[1:], starts[2:], strict=False)]
    per_round = statistics.median(gaps) if gaps else statistics.median(walls)
    return {"round_s": round(per_round, 2), "wall_median_s": round(statistics.median(walls), 2)}


# In turns-by-rounds mode the scenario's period is far longer than any run: time never changes the turn,
# only next_turn() (SIGUSR2) does.
NEVER_S = 1e6


class TurnByRounds:
    """on_poll hook: end a group's turn once `phase_rounds` more rounds have committed."""

    def __init__(self, lab: BenchLab, phase_rounds: int) -> None:
        self.lab, self.phase_rounds = lab, phase_rounds
        self.turned_after: list[int] = []  # committed round count at each turn change

    def __call__(self, job: Any) -> None:
        if job.committed_rounds >= self.phase_rounds * (len(self.turned_after) + 1):
            self.lab.next_turn()
            self.turned_after.append(job.committed_rounds)


def run_algorithm(
    args: argparse.Namespace, algorithm: str, order: list[int], groups: list[int]
) -> dict[str, Any]:
    by_rounds = args.turns == "rounds"
    period = NEVER_S if by_rounds else args.phase_rounds * args.round_s
    lab_args = [
        "--scenario",
        "alternating",
        "--groups",
        str(GROUPS),
        "--period-s",
        f"{period:g}",
        "--hold-online",
    ]
    started = time.monotonic()
    with BenchLab(
        args.phones,
        seed=args.seed,
        lab_args=lab_args,
        # Phones count as back once a probe sees them; 2 s keeps 20 phones' probes from eating the CPU.
        extra_env={"FEDFLEET_PROBE_INTERVAL_S": str(args.probe_s)},
        register_order=order,
    ) as lab:
        turns = TurnByRounds(lab, args.phase_rounds) if by_rounds else None
        job = lab.run_job(
            job_config(args, algorithm),
            on_prepared=lambda _job: lab.start_scenario(),
            auto_resume=args.auto_resume,
            on_poll=turns,
            poll_s=0.1 if by_rounds else 0.5,
        )
        result = summarise(job, groups, 2 * args.phase_rounds)
        result["operator_resumes"] = lab.resumes.get(job.pk, 0)
        if turns is not None:
            result["turn_changes_after_round"] = turns.turned_after
    result["lab_wall_s"] = round(time.monotonic() - started, 1)
    return result


def run_in_child(algorithm: str) -> dict[str, Any]:
    """Run this script for one algorithm in a fresh process; its last stdout line is the result."""
    argv = [sys.executable, __file__, *sys.argv[1:], "--one", algorithm]
    done = subprocess.run(argv, check=False, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"child run exited with {done.returncode}", "stdout_tail": done.stdout[-2000:]}
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=36)
    parser.add_argument("--phase-rounds", type=int, default=5, help="E: rounds' worth of time per group turn")
    parser.add_argument(
        "--round-s", type=float, default=0.0, help="seconds per round in this lab (0: measure it first)"
    )
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--algorithms", default="fedavg,fedlaavg")
    parser.add_argument("--min-reports", type=int, default=3, help="a round commits with this many reports")
    parser.add_argument(
        "--probe-s", type=int, default=2, help="health-probe period (how soon a phone counts)"
    )
    parser.add_argument("--auto-resume", type=int, default=5, help="resume a job paused by abandoned rounds")
    parser.add_argument(
        "--turns",
        choices=("rounds", "time"),
        default="rounds",
        help="end each group's turn after phase_rounds committed rounds (default), or after "
        "phase_rounds × round_s seconds of lab time",
    )
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one algorithm here
    args = parser.parse_args()
    if args.phones % GROUPS:
        parser.error("--phones must be even (two equal groups)")

    groups, means = client_groups(args.phones, args.seed, args.data_seed)
    order = registration_order(groups)
    if args.one == "calibrate":
        print(json.dumps(calibrate(args, order)), flush=True)
        return
    if args.one:
        # A child run: one lab, one job. Django and Celery bind to one database and Redis per process, so
        # every algorithm gets its own process (and its own fresh lab).
        print(json.dumps(run_algorithm(args, args.one, order, groups)), flush=True)
        return
    calibration: dict[str, Any] = {}
    if args.turns == "time" and args.round_s <= 0:
        # The scenario's period is in seconds; make it phase_rounds rounds of this machine, now.
        calibration = run_in_child("calibrate")
        args.round_s = float(calibration.get("round_s") or 4.0)
        sys.argv += ["--round-s", str(args.round_s)]  # the children use the calibrated period
    results = {name: run_in_child(name) for name in args.algorithms.split(",")}
    verdict: dict[str, Any] = {}
    if {"fedavg", "fedlaavg"} <= set(results):
        avg, la = results["fedavg"], results["fedlaavg"]
        if avg["final_accuracy"] is not None and la["final_accuracy"] is not None:
            verdict = {
                "fedlaavg_minus_fedavg_final": round(la["final_accuracy"] - avg["final_accuracy"], 4),
                "fedlaavg_minus_fedavg_last_cycle_mean": round(
                    la["last_cycle"]["mean"] - avg["last_cycle"]["mean"], 4
                ),
                "fedlaavg_steadier": la["last_cycle"]["std"] < avg["last_cycle"]["std"],
                "fedlaavg_ahead": la["last_cycle"]["mean"] > avg["last_cycle"]["mean"],
            }
    emit(
        {
            "benchmark": "availability_bias",
            "setup": {
                "phones": args.phones,
                "per_round": args.per_round,
                "rounds": args.rounds,
                "phase_rounds": args.phase_rounds,
                "turns": args.turns,
                "period_s": args.phase_rounds * args.round_s if args.turns == "time" else None,
                "model": "logreg",
                "partition": "shards k=1",
                "lr": args.lr,
                "fedavg_local": "1 epoch (~8 steps, batch 10)",
                "fedlaavg_local_steps": args.local_steps,
                "seed": args.seed,
                "data_seed": args.data_seed,
                "min_reports": args.min_reports,
                "probe_interval_s": args.probe_s,
                "client_mean_labels": [round(m, 2) for m in means],
                "client_groups": groups,
            },
            "calibration": calibration,
            "results": results,
            "verdict": verdict,
        }
    )


if __name__ == "__main__":
    main()
