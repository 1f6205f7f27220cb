"""FedAvg (McMahan et al., AISTATS 2017), ALGORITHMS.md §1.

Server side: uniform random selection (the `Strategy` default); every selected client receives the global
weights and the job's local-training config; the round's deltas are combined by an `Aggregator` (default:
the sample-weighted mean) and applied with a server learning rate η_g:

    w_{t+1} = w_t + η_g · Σ_k (n_k / n) Δ_k        (η_g = 1 gives exactly Σ_k (n_k / n) w^k)

Failures do not enter the maths; a round with no update leaves the model unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.fl.aggregators import DEFAULT_AGGREGATOR, make_aggregator
from training.fl.strategy import (
    Aggregator,
    ClientFailure,
    ClientInstructions,
    ClientUpdate,
    ServerState,
    Strategy,
    Weights,
    round_counts,
    same_for_all,
)


class FedAvg(Strategy):
    name = "fedavg"
    client_algorithm = "fedavg"  # CLIENT_ALGORITHMS key the phones run

    def __init__(self, *, server_lr: float = 1.0, aggregator: Aggregator | None = None) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = float(server_lr)
        self.aggregator: Aggregator = (
            aggregator if aggregator is not None else make_aggregator(DEFAULT_AGGREGATOR)
        )

    def client_config(self, base_config: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON config every selected client gets (subclasses add their keys)."""
        return {**base_config, "algorithm": self.client_algorithm}

    def configure(
        self, state: ServerState, round_no: int, client_ids: Sequence[str], base_config: Mapping[str, Any]
    ) -> list[ClientInstructions]:
        config = self.client_config(base_config)
        return same_for_all(state, client_ids, config)

    def aggregate(
        self,
        state: ServerState,
        round_no: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[ClientFailure],
    ) -> tuple[ServerState, dict[str, float]]:
        metrics = round_counts(round_no, updates, failures)
        if not updates:
            return state, metrics
        names = list(state.weights)
        deltas = [{name: u.tensors[name] for name in names} for u in updates]
        counts = [u.num_samples for u in updates]
        mean_delta = self.aggregator(deltas, counts)
        weights: Weights = {
            name: (state.weights[name] + self.server_lr * mean_delta[name].to(state.weights[name].dtype))
            for name in names
        }
        metrics.update(_round_metrics(updates, mean_delta))
        return ServerState(weights=weights, buffers=state.buffers, meta=state.meta), metrics


def _round_metrics(updates: Sequence[ClientUpdate], mean_delta: Weights) -> dict[str, float]:
    samples = sum(u.num_samples for u in updates)
    metrics = {
        "samples": float(samples),
        "update_norm": float(sum(float((t.double() ** 2).sum()) for t in mean_delta.values()) ** 0.5),
    }
    with_loss = [u for u in updates if "loss_after" in u.metrics]
    weight = sum(u.num_samples for u in with_loss)
    if with_loss and weight > 0:
        metrics["train_loss"] = sum(u.metrics["loss_after"] * u.num_samples for u in with_loss) / weight
    if all("completed" in u.metrics for u in updates):
        metrics["num_partial"] = float(sum(1 for u in updates if u.metrics["completed"] < 1.0))
    return metrics
