"""Submodels vs the full model, in-process (no phones, no workers): bytes, AUC and ε per privacy preset.

    .venv/bin/python bench/submodel_sim.py [--items 100000] [--dim 16] [--clients 20] [--rounds 10]

Runs the real Strategy and client code — the request step (randomized response over the union), each
phone's submodel download, local training, the sparse upload and its validation, FedSubAvg — for every
privacy preset, and the FedAvg-on-the-full-model baseline with the very same data, initial weights and
local training. Bytes are the safetensors files that would travel (`wire.dumps_tensors`), per client per
round. Prints JSON; the platform benchmark on a virtual lab (bench/submodel.py, issue 7) comes later.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.fl.client import ClientTask, client_config_for_round, client_train  # noqa: E402
from training.fl.ctr_model import CTRModel, CTRModelConfig, auc, build_ctr_model, evaluate_ctr  # noqa: E402
from training.fl.fedsubavg import FedSubAvg, FullModelFedAvg, fedsubavg_client_request  # noqa: E402
from training.fl.index_privacy import (  # noqa: E402
    PRESETS,
    expected_request_rows,
    per_round_epsilon,
    permanent_epsilon,
)
from training.fl.recsys_data import RecsysConfig, RecsysData, generate_recsys  # noqa: E402
from training.fl.seeding import derive_seed  # noqa: E402
from training.fl.strategy import ClientInfo, ClientUpdate, Strategy  # noqa: E402
from training.fl.submodel import index_sets_of, union_of  # noqa: E402
from training.fl.wire import dumps_tensors  # noqa: E402


def _epsilon(value: float) -> float | str:
    return "inf" if value == float("inf") else round(value, 4)


def run(
    strategy: Strategy,
    data: RecsysData,
    model_config: CTRModelConfig,
    base_config: dict[str, Any],
    rounds: int,
    per_round: int,
    seed: int,
) -> list[dict[str, float]]:
    """One job; per round: test AUC/log-loss and bytes down/up per selected client."""
    model = build_ctr_model(data.num_items, data.num_categories, model_config, seed=seed)
    state = strategy.initial_state(dict(model.state_dict()))
    if isinstance(strategy, FedSubAvg):
        strategy.set_union(state, union_of([index_sets_of(c) for c in data.clients]))
    clients = {f"c{i:03d}": samples for i, samples in enumerate(data.clients)}
    available = [ClientInfo(cid, len(s)) for cid, s in clients.items()]
    eval_model = CTRModel(data.num_items, data.num_categories, model_config)
    history = []
    with tempfile.TemporaryDirectory(prefix="fedfleet-submodel-") as tmp:
        for round_no in range(1, rounds + 1):
            started = time.perf_counter()
            chosen = strategy.select(state, round_no, available, per_round, random.Random(seed + round_no))
            request_bytes: list[int] = []
            if isinstance(strategy, FedSubAvg):
                union_tensors, request_config = strategy.request_round_inputs(state, base_config)
                for cid in chosen:
                    x, y = clients[cid].to_xy()
                    upload = fedsubavg_client_request(
                        request_config,
                        union_tensors,
                        x,
                        y,
                        Path(tmp) / cid,
                        seed=derive_seed(seed, round_no, cid),
                    )
                    request_bytes.append(len(dumps_tensors(upload)))
                    strategy.set_request(state, round_no, cid, strategy.parse_request(state, upload))
            down, up, updates = [], [], []
            for ins in strategy.configure(state, round_no, chosen, base_config):
                config = client_config_for_round(
                    ins.config, job_seed=seed, round_no=round_no, client_id=ins.client_id
                )
                x, y = clients[ins.client_id].to_xy()
                task = ClientTask(
                    config=config, received=ins.tensors, x=x, y=y, state_dir=Path(tmp) / ins.client_id
                )
                result = client_train(task)
                upload = result.upload()
                if isinstance(strategy, FedSubAvg):
                    problems = strategy.validate_update(state, ins.client_id, upload, result.num_samples)
                    if problems:
                        raise RuntimeError(f"{ins.client_id}: {problems}")
                down.append(len(dumps_tensors(ins.tensors)))
                up.append(len(dumps_tensors(upload)))
                updates.append(ClientUpdate(ins.client_id, result.num_samples, upload, result.metrics()))
            state, _ = strategy.aggregate(state, round_no, updates, [])
            eval_model.load_state_dict(state.weights)
            metrics = evaluate_ctr(eval_model, data.test)
            history.append(
                {
                    "round": round_no,
                    "auc": round(metrics["auc"], 4),
                    "logloss": round(metrics["logloss"], 4),
                    "bytes_down_mean": round(statistics.mean(down)),
                    "bytes_down_max": max(down),
                    "bytes_up_mean": round(statistics.mean(up)),
                    "bytes_request_mean": round(statistics.mean(request_bytes)) if request_bytes else 0,
                    "round_time_s": round(time.perf_counter() - started, 2),
                }
            )
            print(json.dumps({"job": strategy.name, **history[-1]}), file=sys.stderr)
    return history


def _summary(history: list[dict[str, float]]) -> dict[str, Any]:
    best = max(history, key=lambda h: h["auc"])
    return {
        "final_auc": history[-1]["auc"],
        "best_auc": best["auc"],
        "best_round": best["round"],
        "bytes_down_per_client_round": round(statistics.mean(h["bytes_down_mean"] for h in history)),
        "bytes_up_per_client_round": round(statistics.mean(h["bytes_up_mean"] for h in history)),
        "bytes_request_per_client_round": round(statistics.mean(h["bytes_request_mean"] for h in history)),
        "rounds": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--presets", default="none,default,whole_union")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    data = generate_recsys(RecsysConfig(num_items=args.items, num_clients=args.clients, seed=args.seed))
    model_config = CTRModelConfig(emb_dim=args.dim)
    base = {"model": {"name": "ctr", **model_config.to_json()}, "lr": args.lr, "epochs": 1, "batch_size": 32}
    real = [index_sets_of(c) for c in data.clients]
    union = union_of(real)
    s_items = statistics.mean(r["emb.item"].numel() for r in real)
    u_items = union["emb.item"].numel()
    result: dict[str, Any] = {
        "setup": {
            "items": args.items,
            "categories": data.num_categories,
            "emb_dim": args.dim,
            "clients": args.clients,
            "per_round": args.per_round,
            "rounds": args.rounds,
            "lr": args.lr,
            "samples_per_client": len(data.clients[0]),
            "real_items_per_client_mean": round(s_items, 1),
            "union_items": u_items,
            "oracle_test_auc": round(auc(data.test_oracle_prob, data.test.label), 4),
        },
        "jobs": {},
    }
    for name in [p for p in args.presets.split(",") if p]:
        p = PRESETS[name]
        strategy = FedSubAvg(privacy=p)
        summary = _summary(run(strategy, data, model_config, base, args.rounds, args.per_round, args.seed))
        summary["privacy"] = {
            **p.to_json(),
            "epsilon_per_round": _epsilon(per_round_epsilon(p)),
            "epsilon_permanent": _epsilon(permanent_epsilon(p)),
            "expected_item_rows_requested": round(expected_request_rows(round(s_items), u_items, p), 1),
        }
        result["jobs"][f"fedsubavg/{name}"] = summary
    if not args.no_baseline:
        summary = _summary(
            run(FullModelFedAvg(), data, model_config, base, args.rounds, args.per_round, args.seed)
        )
        result["jobs"]["fedavg_full"] = summary
        full_bytes = summary["bytes_down_per_client_round"]
        for s in result["jobs"].values():
            s["download_reduction_vs_full"] = round(full_bytes / s["bytes_down_per_client_round"], 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
