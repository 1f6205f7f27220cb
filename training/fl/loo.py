"""Exact leave-one-out ground truth for client influence (ALGORITHMS.md §5), on top of simulate.py.

The true influence of client c is what happens when the job is retrained without c: same seeds, same
per-round selection minus c (simulate.py makes such replays exact: every client's shuffling, stragglers
and the initial model have their own derived seeds, so dropping c changes nothing else). It costs one full
job per client, so it is for small jobs — it is what shows how good the Fed-Influence estimate is:

    base, tracker = simulate_with_influence(config, InfluenceConfig(), behaviours=...)
    exact = exact_leave_one_out(config, base=base, behaviours=...)
    compare({c: v["loss"] for c, v in tracker.influence().items()}, exact.loss())  # Pearson, Spearman

Influence is measured on the job's held-out test set (the same data the server's estimate uses):
loss(w_T without c) − loss(w_T), accuracy likewise; positive loss influence = c helps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from training.fl.evaluate import evaluate
from training.fl.influence import InfluenceConfig, InfluenceTracker
from training.fl.nets import build_model_from_spec, set_weights
from training.fl.simulate import (
    FederatedSetup,
    RoundTrace,
    SimulationConfig,
    SimulationResult,
    prepare,
    simulate,
)
from training.fl.strategy import Weights


@dataclass
class ExactInfluence:
    loss: float
    accuracy: float
    params_norm: float  # ‖w_T(without c) − w_T‖
    seconds: float


@dataclass
class LeaveOneOutResult:
    baseline: dict[str, float]  # loss and accuracy of the full job's final model
    clients: dict[str, ExactInfluence]
    seconds: float  # all replays (not the base run)
    base_seconds: float = 0.0  # the base run, when this call had to make it
    participants: list[str] = field(default_factory=list)

    def loss(self) -> dict[str, float]:
        return {c: v.loss for c, v in self.clients.items()}

    def accuracy(self) -> dict[str, float]:
        return {c: v.accuracy for c, v in self.clients.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": dict(self.baseline),
            "clients": {c: vars(v) for c, v in self.clients.items()},
            "seconds": self.seconds,
            "base_seconds": self.base_seconds,
        }


def _final_metrics(setup: FederatedSetup, weights: Weights) -> tuple[float, float]:
    model = build_model_from_spec(setup.model_spec)
    set_weights(model, {k: weights[k] for k in model.state_dict()})
    result = evaluate(model, setup.data.test.x, setup.data.test.y)
    return result.loss, result.accuracy


def _distance(a: Weights, b: Weights) -> float:
    return math.sqrt(
        sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point())
    )


def participants(result: SimulationResult) -> list[str]:
    """Clients whose update entered at least one round (everyone else has exactly zero influence)."""
    seen: dict[str, None] = {}
    for record in result.rounds:
        for cid in record.reported:
            seen.setdefault(cid, None)
    return sorted(seen)


def exact_leave_one_out(
    config: SimulationConfig,
    *,
    setup: FederatedSetup | None = None,
    base: SimulationResult | None = None,
    clients: Collection[str] | None = None,
    behaviours: Mapping[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> LeaveOneOutResult:
    """Replay the job once per client without it. `base` is the full run (made here if not given; it must
    come from the same config and behaviours). `clients` defaults to every participant. `progress(c, i, n)`
    is called before each replay so a long run can report."""
    setup = setup if setup is not None else prepare(config)
    base_seconds = 0.0
    if base is None:
        started = time.perf_counter()
        base = simulate(config, setup=setup, behaviours=behaviours)
        base_seconds = time.perf_counter() - started
    selections = base.selections()
    base_loss, base_accuracy = _final_metrics(setup, base.final_state.weights)
    targets = sorted(clients) if clients is not None else participants(base)
    out: dict[str, ExactInfluence] = {}
    replay_started = time.perf_counter()
    for index, cid in enumerate(targets):
        if progress is not None:
            progress(cid, index, len(targets))
        started = time.perf_counter()
        without = simulate(config, setup=setup, selections=selections, exclude={cid}, behaviours=behaviours)
        loss, accuracy = _final_metrics(setup, without.final_state.weights)
        out[cid] = ExactInfluence(
            loss=loss - base_loss,
            accuracy=accuracy - base_accuracy,
            params_norm=_distance(without.final_state.weights, base.final_state.weights),
            seconds=time.perf_counter() - started,
        )
    return LeaveOneOutResult(
        baseline={"loss": base_loss, "accuracy": base_accuracy},
        clients=out,
        seconds=time.perf_counter() - replay_started,
        base_seconds=base_seconds,
        participants=participants(base),
    )


def influence_observer(
    tracker: InfluenceTracker, *, lr: float, server_lr: float = 1.0
) -> Callable[[RoundTrace], None]:
    """An `on_round` callback for simulate() that feeds each committed round to the tracker, the way the
    engine does after aggregation: actual local step counts from each client's metrics, and the actual
    new global weights (so a robust aggregator's w_t is used, even though δ_t assumes the weighted mean)."""

    def observe(trace: RoundTrace) -> None:
        if not trace.updates:
            return
        names = list(trace.state_before.weights)
        updates = [(u.client_id, u.num_samples, {k: u.tensors[k] for k in names}) for u in trace.updates]
        steps = {u.client_id: int(u.metrics.get("steps", 0)) for u in trace.updates}
        tracker.observe_round(
            trace.record.round_no,
            trace.state_before.weights,
            updates,
            lr,
            steps,
            server_lr=server_lr,
            global_weights_after=trace.state_after.weights,
        )

    return observe


def simulate_with_influence(
    config: SimulationConfig,
    influence_config: InfluenceConfig | Mapping[str, Any] | None = None,
    *,
    setup: FederatedSetup | None = None,
    behaviours: Mapping[str, str] | None = None,
) -> tuple[SimulationResult, InfluenceTracker, float]:
    """Run the job once with the Fed-Influence estimate on the test set; returns the run, the tracker
    and the seconds the estimate itself took (the sum of its per-round costs)."""
    setup = setup if setup is not None else prepare(config)
    spec = setup.model_spec
    tracker = InfluenceTracker(
        lambda: build_model_from_spec(spec), (setup.data.test.x, setup.data.test.y), influence_config
    )
    server_lr = float(getattr(setup.strategy, "server_lr", 1.0))
    result = simulate(
        config,
        setup=setup,
        behaviours=behaviours,
        on_round=influence_observer(tracker, lr=config.lr, server_lr=server_lr),
    )
    return result, tracker, sum(c.seconds for c in tracker.costs)


# ---------------------------------------------------------------------------------------------------------
# Comparing the estimate with the truth.
# ---------------------------------------------------------------------------------------------------------


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; nan when either side is constant or there are fewer than two points."""
    if len(a) != len(b):
        raise ValueError("pearson: sequences differ in length")
    if len(a) < 2:
        return math.nan
    x = torch.tensor(a, dtype=torch.float64)
    y = torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float(x @ y) / denominator if denominator > 0 else math.nan


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank (as Spearman's definition requires)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return pearson(average_ranks(a), average_ranks(b))


def compare(estimated: Mapping[str, float], exact: Mapping[str, float]) -> dict[str, Any]:
    """Agreement between estimated and exact influence over the clients both have: Pearson r, Spearman ρ,
    the count, and whether both put the same client lowest (the most harmful)."""
    common = sorted(set(estimated) & set(exact))
    est = [float(estimated[c]) for c in common]
    true = [float(exact[c]) for c in common]
    lowest_est = min(common, key=lambda c: estimated[c]) if common else None
    lowest_true = min(common, key=lambda c: exact[c]) if common else None
    return {
        "pearson": pearson(est, true),
        "spearman": spearman(est, true),
        "n": len(common),
        "lowest_estimated": lowest_est,
        "lowest_exact": lowest_true,
        "same_lowest": lowest_est is not None and lowest_est == lowest_true,
    }


# ---------------------------------------------------------------------------------------------------------
# Quick check from the command line (not a test: it replays the job once per client).
#   python -m training.fl.loo --clients 20 --flippers 3 --rounds 20
# ---------------------------------------------------------------------------------------------------------


def check_estimate(
    config: SimulationConfig,
    flippers: int,
    influence_config: InfluenceConfig | Mapping[str, Any] | None = None,
    behaviour: str = "label_flip",
) -> dict[str, Any]:
    """Estimate vs exact leave-one-out on `config` with the first `flippers` clients misbehaving."""
    setup = prepare(config)
    bad = setup.client_ids[:flippers]
    behaviours = dict.fromkeys(bad, behaviour)
    base, tracker, estimate_seconds = simulate_with_influence(
        config, influence_config, setup=setup, behaviours=behaviours
    )
    exact = exact_leave_one_out(config, setup=setup, base=base, behaviours=behaviours)
    influence = tracker.influence()
    estimated_loss = {c: v["loss"] for c, v in influence.items()}
    lowest = sorted(estimated_loss, key=lambda c: estimated_loss[c])[: len(bad)]
    return {
        "config": config.to_dict(),
        "influence_config": tracker.config.to_dict(),
        "misbehaving": bad,
        "final_accuracy": base.rounds[-1].metrics.get("accuracy") if base.rounds else None,
        "loss": compare(estimated_loss, exact.loss()),
        "loss_first_order": compare({c: v["loss_first_order"] for c, v in influence.items()}, exact.loss()),
        "accuracy": compare({c: v["accuracy"] for c, v in influence.items()}, exact.accuracy()),
        "misbehaving_rank_lowest": sorted(lowest) == sorted(bad),
        "estimate_seconds": estimate_seconds,
        "exact_seconds": exact.seconds,
        "truncated": {c: v["truncated_layers"] for c, v in influence.items() if v["truncated_layers"]},
    }


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        description="Fed-Influence estimate vs exact leave-one-out (small jobs)."
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--flippers", type=int, default=3)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--influence", default="{}", help='InfluenceConfig as JSON, e.g. {"budget": 200}')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = SimulationConfig(
        model=args.model,
        num_clients=args.clients,
        clients_per_round=args.per_round,
        rounds=args.rounds,
        lr=args.lr,
        epochs=1,
        batch_size=10,
        seed=args.seed,
    )
    print(json.dumps(check_estimate(config, args.flippers, json.loads(args.influence)), indent=2))


if __name__ == "__main__":
    main()
