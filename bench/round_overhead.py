"""Platform overhead per round: a FedAvg MLP job on digits over a virtual lab with real workers.

    .venv/bin/python bench/round_overhead.py [--phones 20] [--per-round 10] [--rounds 10]
                                             [--runtime exec|resident|app|all]

Prints JSON: per-round wall time, the slowest phone's training time, the platform overhead (wall minus
the slowest phone's training) as median and p95, its share of the round, the final accuracy, and the
rounds to 90 % test accuracy. "Training" is what the agent measured around its SGD loop (result.json
`train_time_s`); everything else in the round — selection, pushes, process start on the phone, data
loading, pulls, validation, aggregation, evaluation, database and events — counts as overhead.
Targets (issue #4): median overhead ≤ 1 s and ≤ 25 % of the round; ≥ 90 % accuracy within 30 rounds.

--runtime picks how the phones run the agent (issue #13): exec (the shell runs it per round), resident (the
platform keeps `agent serve` running through the shell and talks over ADB's tcp: stream) or app (stock
phones whose Termux-like app runs `agent serve`; the platform only opens streams). `all` runs the three
one after the other, each in its own process on a fresh lab of the same phones, and prints one JSON with
a result per runtime. Per phone, "outside training" is its push + pull + agent step minus the agent's own SGD time.
Targets (issue #13), resident and app: median overhead per round ≤ 0.2 s, per-phone time outside
training ≤ 30 ms, accuracy unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchLab, emit, percentile  # noqa: E402

RUNTIMES = ("exec", "resident", "app")


def stock_profiles(work: Path) -> Path:
    """The lab's default catalogue of phones, each a stock build with the Termux-like app (app mode)."""
    from devices.virtual.profile import CATALOGUE  # noqa: PLC0415

    phones = [{**entry, "stock": True, "termux": {"installed": True}} for entry in CATALOGUE]
    path = work / "stock-profiles.json"
    path.write_text(json.dumps({"phones": phones}))
    return path


def register_runtime(lab: BenchLab, runtime: str) -> None:
    """Register the lab's phones again with `runtime` (BenchLab registered them as exec)."""
    from devices import tasks as device_tasks  # noqa: PLC0415
    from devices.services import register_or_update_device  # noqa: PLC0415

    secrets = {}
    if runtime == "app":
        secrets = json.loads((lab.work / "lab" / "agent_secrets.json").read_text())
    for line in lab.phone_lines:
        serial, address = line.split()[:2]
        app = runtime == "app"
        device = register_or_update_device(
            name=serial,
            transport="tcp",
            address=address,
            tags=["virtual"],
            work_dir="/sdcard/fedfleet/" if app else "/data/local/tmp/fedfleet/",
            runtime=runtime,
            agent_port=secrets[serial]["port"] if app else 7000,
            agent_secret=secrets[serial]["secret"] if app else "",
        )
        for _ in range(240):  # an app's agent imports torch as the lab starts: online once it listens
            if device_tasks.probe_device(device.pk) == "online":
                break
            time.sleep(0.5)
        print(f"{serial}: {runtime}", file=sys.stderr, flush=True)


def run_one(args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    lab_args: list[str] = []
    profiles = None
    work = Path(tempfile.mkdtemp(prefix="fedfleet-bench-agent-"))
    if runtime == "app":
        from training.agent.build import build_agent_pyz  # noqa: PLC0415

        # The platform's own build (reproducible: the workers build the same bytes), as a person would
        # have copied it to each phone.
        lab_args = ["--agent-pyz", str(build_agent_pyz(work).path)]
        profiles = stock_profiles(work)
    print(f"--- runtime {runtime} ---", file=sys.stderr, flush=True)
    with BenchLab(args.phones, seed=args.seed, profiles=profiles, lab_args=lab_args) as lab:
        register_runtime(lab, runtime)
        job = lab.run_job(
            {
                "name": f"bench-round-overhead-{runtime}",
                "dataset": "digits",
                "partition": "iid",
                "model": args.model,
                **({"local_epochs": args.epochs} if args.epochs else {}),
                "algorithm": "fedavg",
                "rounds": args.rounds,
                "clients_per_round": args.per_round,
                "seed": args.seed,
            }
        )
        return summarise(args, runtime, job)


def summarise(args: argparse.Namespace, runtime: str, job: Any) -> dict[str, Any]:
    from training.models import ClientState, RoundStatus  # noqa: PLC0415

    rounds = []
    outside_all: list[float] = []
    for rnd in job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number"):
        reported = list(rnd.client_results.filter(state=ClientState.REPORTED))
        slowest_training = max(float(r.metrics.get("train_time_s", 0.0)) for r in reported)
        slowest_command = max(r.train_s for r in reported)
        # Where a phone's non-training time goes: its agent process outside the SGD loop (start,
        # load, write) and the platform's ADB traffic around it.
        agent_outside_training = statistics.median(
            r.train_s - float(r.metrics.get("train_time_s", 0.0)) for r in reported
        )
        # Everything a phone's round took but its SGD loop: push, the agent step's rest, pull.
        outside = [
            r.push_s + r.pull_s + r.train_s - float(r.metrics.get("train_time_s", 0.0)) for r in reported
        ]
        if rnd.number > 1:  # round 1 also pushes the agent and the shards (a one-off)
            outside_all.extend(outside)
        last_report = max(r.reported_at for r in reported)

        def median_of(key: str, rows: list = reported) -> float:
            return round(statistics.median(float(r.metrics.get(key, 0.0)) for r in rows), 3)

        rounds.append(
            {
                "round": rnd.number,
                "wall_s": round(rnd.wall_s, 3),
                "slowest_training_s": round(slowest_training, 3),
                "slowest_agent_command_s": round(slowest_command, 3),
                "overhead_s": round(rnd.wall_s - slowest_training, 3),
                "select_s": round(rnd.select_s, 3),
                "push_s": round(rnd.push_s, 3),
                "pull_s": round(rnd.pull_s, 3),
                "aggregate_s": round(rnd.aggregate_s, 3),
                "phone_agent_outside_training_median_s": round(agent_outside_training, 3),
                "phone_outside_training_median_s": round(statistics.median(outside), 4),
                # The agent's own phases (its clock, from start of main to result.json written);
                # the rest of the agent command is process start on the phone and ADB streaming.
                "phone_agent_load_median_s": median_of("agent_load_s"),
                "phone_agent_write_median_s": median_of("agent_write_s"),
                "phone_agent_total_median_s": median_of("agent_total_s"),
                "phone_agent_command_median_s": round(statistics.median(r.train_s for r in reported), 3),
                "phone_push_median_s": round(statistics.median(r.push_s for r in reported), 3),
                "phone_pull_median_s": round(statistics.median(r.pull_s for r in reported), 3),
                "last_report_to_commit_s": round((rnd.finished_at - last_report).total_seconds(), 3),
                "accuracy": rnd.accuracy,
            }
        )
    overheads = [r["overhead_s"] for r in rounds]
    shares = [r["overhead_s"] / r["wall_s"] for r in rounds if r["wall_s"] > 0]
    to_90 = next((r["round"] for r in rounds if (r["accuracy"] or 0) >= 0.9), None)
    return {
        "benchmark": "round_overhead",
        "runtime": runtime,
        "job_status": job.status,
        "phones": args.phones,
        "model": args.model,
        "local_epochs": job.config["local_epochs"],
        "per_round": args.per_round,
        "rounds": rounds,
        "overhead_median_s": round(statistics.median(overheads), 3) if overheads else None,
        "overhead_p95_s": round(percentile(overheads, 0.95), 3) if overheads else None,
        # Round 1 also pushes the agent and the shards and is each worker's first use of the
        # job (its data set loaded, its first connections): a one-off, shown apart.
        "first_round_overhead_s": overheads[0] if overheads else None,
        "overhead_median_after_first_s": round(statistics.median(overheads[1:]), 3)
        if len(overheads) > 1
        else None,
        "overhead_p95_after_first_s": round(percentile(overheads[1:], 0.95), 3)
        if len(overheads) > 1
        else None,
        "overhead_share_median": round(statistics.median(shares), 3) if shares else None,
        "phone_outside_training_median_s": round(statistics.median(outside_all), 4) if outside_all else None,
        "wall_median_s": round(statistics.median(r["wall_s"] for r in rounds), 3) if rounds else None,
        "final_accuracy": job.last_accuracy,
        "rounds_to_90": to_90,
        "targets": {"overhead_median_s": 1.0, "overhead_share": 0.25, "rounds_to_90_within": 30}
        if runtime == "exec"
        else {"overhead_median_s": 0.2, "phone_outside_training_median_s": 0.03, "rounds_to_90_within": 30},
    }


def run_child(args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    """One runtime in its own process: Django binds one lab's database and Redis per process."""
    import subprocess  # noqa: PLC0415

    argv = [sys.executable, __file__, "--runtime", runtime, "--phones", str(args.phones), "--per-round",
            str(args.per_round), "--rounds", str(args.rounds), "--seed", str(args.seed), "--model", args.model,
            *(["--epochs", str(args.epochs)] if args.epochs else [])]  # fmt: skip
    print(f"=== {runtime}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    child = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)  # noqa: S603 - our own script
    return dict(json.loads(child.stdout[child.stdout.index("{") :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="mlp", help="mlp (the default job), cnn or logreg")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: the job default)")
    parser.add_argument("--runtime", choices=[*RUNTIMES, "all"], default="exec")
    args = parser.parse_args()

    if args.runtime != "all":
        emit(run_one(args, args.runtime))
        return
    results = {runtime: run_child(args, runtime) for runtime in RUNTIMES}
    emit(
        {
            "benchmark": "round_overhead",
            "runtime": "all",
            "results": results,
            "summary": {
                runtime: {
                    "overhead_median_s": r["overhead_median_s"],
                    "overhead_median_after_first_s": r["overhead_median_after_first_s"],
                    "phone_outside_training_median_s": r["phone_outside_training_median_s"],
                    "final_accuracy": r["final_accuracy"],
                    "rounds_to_90": r["rounds_to_90"],
                }
                for runtime, r in results.items()
            },
        }
    )


if __name__ == "__main__":
    main()
