"""The same federated data set as pushed shards and as phone-resident files, on one virtual lab.

    .venv/bin/python bench/own_data.py [--phones 20] [--users 100] [--rounds 10] [--epochs 2]

A LEAF-format file is generated from scikit-learn's digits: `--users` users, each with a Dirichlet(0.5)
mix of the classes (LEAF's natural non-IID clients). It is stored as an uploaded data set (the upload
path's checks) and its training part, split by the natural partition (user i -> phone i mod N), is
written as each phone's own `data/train.npz` and seeded into the lab (`virtual_lab --seed-data`). Two
FedAvg jobs on the same phones, the same model and the same held-out test set then train:

- resident: data_on_phone (phones report counts), run first, so the agent's one push falls in it;
- pushed:   the uploaded data set, natural partition, a shard per phone pushed by the server.

Prints progress, then JSON: accuracy per round for both; per phone per job, the bytes sent to it split
into model payload (global model + config.json), the agent, and sample bytes (shards: what is left; a
resident job must move 0); bytes pulled; and agent.pyz's size with and without the example plug-in.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, BenchLab, emit  # noqa: E402


def digits_leaf(path: Path, users: int, seed: int) -> dict[str, Any]:
    """A LEAF JSON file of all 1,797 digits (flat 64 pixels in [0, 1]): each user draws its class mix
    from Dirichlet(0.5) and takes samples of those classes until every sample has a user."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    from training.fl.data_formats.writers import leaf_document  # noqa: PLC0415

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(len(bunch.target), -1)
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet([0.5] * 10, size=users)  # users × classes
    owner = np.empty(len(y), dtype=np.int64)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(y == label))
        weights = mix[:, label] / mix[:, label].sum()
        owner[members] = rng.choice(users, size=len(members), p=weights)
    names = [f"f{u:04d}" for u in owner]
    path.write_bytes(leaf_document(x, y, names))
    sizes = np.bincount(owner, minlength=users)
    return {"users": int((sizes > 0).sum()), "samples": len(y), "bytes": path.stat().st_size,
            "samples_per_user": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}}  # fmt: skip


def seed_files(leaf: Path, phones: int, out: Path) -> list[int]:
    """Each phone's part of the file's training split, as the job's natural partition cuts it."""
    from training.fl.data_formats import read_dataset  # noqa: PLC0415
    from training.fl.data_formats.writers import write_npz  # noqa: PLC0415
    from training.fl.partition import partition_dataset  # noqa: PLC0415

    # The layout `manage.py phone_data_files` writes (engine/phone_data.py), here without Django, which
    # the lab must not need before it starts.
    splits = read_dataset(leaf, feature_shape=[1, 8, 8], seed=0)
    parts = partition_dataset("natural", splits.train, phones, seed=1)
    for index, indices in enumerate(parts):
        folder = out / f"phone-{index:04d}" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        write_npz(folder / "train.npz", splits.train.x.numpy()[indices], splits.train.y.numpy()[indices])
    return [len(p) for p in parts]


def agent_sizes(work: Path) -> dict[str, int]:
    from training.agent.build import build_agent_pyz  # noqa: PLC0415

    plain = build_agent_pyz(work / "agent-plain", plugins=[])
    with_plugin = build_agent_pyz(work / "agent-plugin")
    return {"without_plugin": plain.size, "with_example_plugin": with_plugin.size,
            "plugins_bundled": list(with_plugin.plugins)}  # fmt: skip


def job_figures(job: Any) -> dict[str, Any]:
    from training.models import ClientResult, RoundStatus  # noqa: PLC0415

    rounds = job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number")
    per_phone: dict[int, dict[str, int]] = {}
    for result in ClientResult.objects.filter(job=job):
        phone = per_phone.setdefault(result.device_id, {"down": 0, "payload_down": 0, "up": 0})
        phone["down"] += int(result.bytes_down or 0)
        phone["payload_down"] += int(result.metrics.get("payload_bytes_down", 0))
        phone["up"] += int(result.bytes_up or 0)
    return {
        "job": job.pk,
        "status": job.status,
        "accuracy_per_round": [round(float(r.accuracy), 4) for r in rounds],
        "final_accuracy": job.last_accuracy,
        "per_phone": per_phone,
        "wall_s": (job.finished_at - job.started_at).total_seconds()
        if job.finished_at and job.started_at
        else None,
    }


def bytes_summary(figures: dict[str, Any], agent_size: int, agent_pushed: bool) -> dict[str, Any]:
    """Per phone: bytes down split into payload, agent and samples (the rest), and bytes up."""
    rows = []
    for phone in figures["per_phone"].values():
        other = phone["down"] - phone["payload_down"]
        agent = agent_size if agent_pushed else 0
        rows.append({"down": phone["down"], "payload": phone["payload_down"], "agent": agent,
                     "samples": other - agent, "up": phone["up"]})  # fmt: skip

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    return {
        "phones": len(rows),
        "median_per_phone": {key: med(key) for key in ("down", "payload", "agent", "samples", "up")},
        "max_sample_bytes_per_phone": max(row["samples"] for row in rows),
        "min_sample_bytes_per_phone": min(row["samples"] for row in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fedfleet-own-data-"))
    leaf = work / "digits_leaf.json"
    generated = digits_leaf(leaf, args.users, args.seed)
    sizes = seed_files(leaf, args.phones, work / "seed")
    print(f"LEAF file: {generated}; phone files: {sizes}", file=sys.stderr, flush=True)
    sizes_of_agent = agent_sizes(work)
    print(f"agent.pyz: {sizes_of_agent}", file=sys.stderr, flush=True)

    with BenchLab(args.phones, seed=args.seed, lab_args=["--seed-data", str(work / "seed")]) as lab:
        from django.contrib.auth import get_user_model  # noqa: PLC0415

        from training.engine.runtimes.exec_shell import agent_build  # noqa: PLC0415
        from training.jobs.datasets import ingest_path  # noqa: PLC0415

        owner, _ = get_user_model().objects.get_or_create(username="bench")
        dataset = ingest_path(owner, leaf, name="digits LEAF", options={"feature_shape": [1, 8, 8]})
        print(
            f"stored data set #{dataset.pk}: {dataset.summary['clients']['count']} clients", file=sys.stderr
        )
        common = {
            "dataset": "uploaded",
            "dataset_params": {"dataset_id": dataset.pk},
            "model": "mlp",
            "rounds": args.rounds,
            "clients_per_round": args.phones,
            "over_selection": 1.0,
            "min_clients": args.phones,
            "local_epochs": args.epochs,
            "batch_size": 10,
            "lr": 0.1,
            "round_deadline_s": 120,
            "influence": "off",
        }
        results = {}
        for label, extra in (
            ("resident", {"data_on_phone": True, "phone_data_report": True}),
            ("pushed", {"partition": "natural"}),
        ):
            t0 = time.monotonic()
            job = lab.run_job({"name": f"own data {label}", **common, **extra}, timeout_s=1800)
            figures = job_figures(job)
            print(f"{label}: {job.status} in {time.monotonic() - t0:.0f} s, accuracy {figures['accuracy_per_round']}",
                  file=sys.stderr, flush=True)  # fmt: skip
            results[label] = figures
        agent_size = agent_build().size  # what the workers pushed (the installed plug-in included)

    resident, pushed = results["resident"], results["pushed"]
    emit(
        {
            "benchmark": "own_data",
            "phones": args.phones,
            "rounds": args.rounds,
            "local_epochs": args.epochs,
            "leaf_file": generated,
            "phone_file_samples": sizes,
            "accuracy_per_round": {
                "resident": resident["accuracy_per_round"],
                "pushed": pushed["accuracy_per_round"],
            },
            "final_accuracy": {"resident": resident["final_accuracy"], "pushed": pushed["final_accuracy"]},
            "wall_s": {"resident": resident["wall_s"], "pushed": pushed["wall_s"]},
            "bytes_per_phone_per_job": {
                # The resident job ran first: its phones received the agent once, then only payloads.
                "resident": bytes_summary(resident, agent_size, agent_pushed=True),
                "pushed": bytes_summary(pushed, agent_size, agent_pushed=False),
            },
            "agent_pyz_bytes": sizes_of_agent,
            "elapsed_s": round(time.monotonic() - started, 1),
            "repo": str(REPO),
        }
    )


if __name__ == "__main__":
    main()
