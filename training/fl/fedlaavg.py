"""FedLaAvg — Federated Latest Averaging (Yan, Niu, Wu et al., arXiv 2002.07399), ALGORITHMS.md §4.

Fixes the global model's bias toward phones that are online often:
- Selection: among the phones available this round, take the `goal` with the oldest last participation
  (never participated = oldest). Ties are broken by the round's seeded rng, so a run is reproducible.
  Among equally old phones, one whose last selection *failed* more recently goes after the others, so a
  phone that keeps failing cannot hold a slot every round (it still gets one whenever nobody is older).
- Client: C local SGD steps from x_r on its loss scaled by N·n_i/n, uploading the delta Δ_i = y_i − x_r.
- Server: G_i = (x_r − y_i)/γ = −Δ_i/γ (the sum of the client's stochastic gradients). It keeps the
  latest G_i of every client (zero for a client never seen), the running mean
  Ḡ = (1/N)·Σ_i G_i^latest updated incrementally (Ḡ += (G_i^new − G_i^old)/N), and sets
  x_{r+1} = x_r − γ·Ḡ. Clients absent this round contribute their stale G_i — that is how FedLaAvg mimics
  asynchronous aggregation and keeps rarely-online phones' data in every step.

Memory cost: the server stores one latest-gradient tensor set per client that has ever reported, i.e. up
to N × (model size) in `ServerState.buffers` — and in every checkpoint, since buffers are checkpointed
with the weights. For the lab's models (a few hundred kB) and tens of phones that is a few MB; a 10 MB
model with 1,000 phones would be 10 GB, which is the price of the algorithm, not of this code.

State keys
- buffers `fedlaavg.G.<client_id>.<param>`: latest G_i (float32). Never parsed back: the client ids are
  listed in meta, and keys are always built from (client_id, param), so dots or colons in ids are fine.
- buffers `fedlaavg.Gbar.<param>`: Ḡ, kept in float64 so that thousands of incremental updates do not
  drift away from the exact mean.
- meta `fedlaavg.last_round`: {client_id: last round whose update was aggregated}.
- meta `fedlaavg.last_failed`: {client_id: last round the client was selected but its update unused}.

Only floating-point entries of the weights are trained; integer buffers (e.g. BatchNorm's
`num_batches_tracked`) keep the server's value.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from training.fl.client import (
    ClientTask,
    LocalTrainingConfig,
    LocalTrainingResult,
    global_weights_for,
    model_for,
    steps_per_epoch,
    train_locally,
)
from training.fl.strategy import (
    ClientFailure,
    ClientInfo,
    ClientInstructions,
    ClientUpdate,
    ServerState,
    Strategy,
    Weights,
    round_counts,
    same_for_all,
)

G_PREFIX = "fedlaavg.G."
GBAR_PREFIX = "fedlaavg.Gbar."
LAST_ROUND_META = "fedlaavg.last_round"
LAST_FAILED_META = "fedlaavg.last_failed"


def g_key(client_id: str, param: str) -> str:
    return f"{G_PREFIX}{client_id}.{param}"


def gbar_key(param: str) -> str:
    return f"{GBAR_PREFIX}{param}"


def trained_params(weights: Weights) -> list[str]:
    """Names of the entries FedLaAvg updates (floating point), in a stable order."""
    return sorted(k for k, v in weights.items() if v.is_floating_point())


def loss_scale(num_clients: int, local_samples: int, total_samples: int | None) -> float:
    """The paper's N·n_i/n factor, so that (1/N)·Σ_i G_i estimates the gradient of the sample-weighted
    global objective. Without a known total, every client counts equally (factor 1)."""
    if not total_samples or total_samples <= 0:
        return 1.0
    return num_clients * local_samples / total_samples


def full_mean_gradient(state: ServerState, num_clients: int) -> Weights:
    """Ḡ recomputed from scratch from the stored latest G_i (float64). The incremental mean must equal
    this; the engine may also use it to re-derive Ḡ after restoring an old checkpoint."""
    params = trained_params(state.weights)
    seen = sorted(state.meta.get(LAST_ROUND_META, {}))
    total = {p: torch.zeros_like(state.weights[p], dtype=torch.float64) for p in params}
    for cid in seen:
        for p in params:
            total[p] += state.buffers[g_key(cid, p)].to(torch.float64)
    return {p: t / num_clients for p, t in total.items()}


class FedLaAvg(Strategy):
    """Oldest-participation selection and latest-gradient averaging.

    `num_clients` is N, every phone in the job (the mean divides by it, seen or not); `lr` is γ, the
    local SGD step size, sent to the clients and used to turn their deltas back into gradient sums;
    `total_samples` is n, the job's total training samples, for the N·n_i/n loss scaling; `local_steps`
    is C, the SGD steps each selected client runs (the paper's default is 10)."""

    name = "fedlaavg"

    def __init__(
        self, num_clients: int, lr: float, total_samples: int | None = None, local_steps: int = 10
    ) -> None:
        if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
            raise ValueError(f"local_steps must be a positive integer, got {local_steps!r}")
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if total_samples is not None and total_samples < 1:
            raise ValueError(f"total_samples must be >= 1 when given, got {total_samples}")
        self.num_clients = num_clients
        self.lr = float(lr)
        self.total_samples = total_samples
        self.local_steps = local_steps

    def initial_state(self, weights: Weights) -> ServerState:
        state = super().initial_state(weights)
        for p in trained_params(state.weights):
            state.buffers[gbar_key(p)] = torch.zeros_like(state.weights[p], dtype=torch.float64)
        state.meta[LAST_ROUND_META] = {}
        state.meta[LAST_FAILED_META] = {}
        return state

    def select(
        self,
        state: ServerState,
        round_no: int,
        available: Sequence[ClientInfo],
        goal: int,
        rng: random.Random,
    ) -> list[str]:
        if goal <= 0:
            return []
        last_round: Mapping[str, int] = state.meta.get(LAST_ROUND_META, {})
        last_failed: Mapping[str, int] = state.meta.get(LAST_FAILED_META, {})
        infos = {c.client_id: c for c in available}
        # Shuffle first, then a stable sort: equal keys keep the rng's (seeded) order.
        ids = sorted(infos)
        rng.shuffle(ids)

        def age_key(cid: str) -> tuple[int, int]:
            participated = last_round.get(cid, infos[cid].last_round)
            return (-1 if participated is None else participated, last_failed.get(cid, -1))

        ids.sort(key=age_key)
        return ids[:goal]

    def configure(
        self, state: ServerState, round_no: int, client_ids: Sequence[str], base_config: Mapping[str, Any]
    ) -> list[ClientInstructions]:
        config = {
            **base_config,
            "algorithm": self.name,
            "lr": self.lr,
            "local_steps": self.local_steps,
            "num_clients": self.num_clients,
            "total_samples": self.total_samples,
        }
        return same_for_all(state, client_ids, config)

    def aggregate(
        self,
        state: ServerState,
        round_no: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[ClientFailure],
    ) -> tuple[ServerState, dict[str, float]]:
        counts = round_counts(round_no, updates, failures)
        ids = [u.client_id for u in updates]
        params = trained_params(state.weights)
        last_round = dict(state.meta.get(LAST_ROUND_META, {}))
        newly_seen = {cid for cid in ids if cid not in last_round}
        if len(last_round) + len(newly_seen) > self.num_clients:
            raise ValueError(
                f"more distinct clients ({len(last_round) + len(newly_seen)}) than num_clients="
                f"{self.num_clients}; the mean over N would be wrong"
            )

        buffers = dict(state.buffers)
        gbar = {p: buffers[gbar_key(p)].clone() for p in params}
        for update in updates:
            for p in params:
                g_new = -update.tensors[p].to(torch.float32) / self.lr
                g_old = buffers.get(g_key(update.client_id, p))
                change = g_new.to(torch.float64)
                if g_old is not None:
                    change = change - g_old.to(torch.float64)
                gbar[p] += change / self.num_clients
                buffers[g_key(update.client_id, p)] = g_new
            last_round[update.client_id] = round_no
        for p in params:
            buffers[gbar_key(p)] = gbar[p]

        weights = dict(state.weights)
        for p in params:
            weights[p] = (state.weights[p].to(torch.float64) - self.lr * gbar[p]).to(state.weights[p].dtype)

        last_failed = dict(state.meta.get(LAST_FAILED_META, {}))
        for failure in failures:
            last_failed[failure.client_id] = round_no
        meta = {**state.meta, LAST_ROUND_META: last_round, LAST_FAILED_META: last_failed}

        metrics = {
            **counts,
            # Clients whose stale G_i still steers the model this round.
            "num_stale": float(len(set(last_round) - set(ids))),
            "num_never_seen": float(self.num_clients - len(last_round)),
            "gbar_norm": _global_norm(gbar.values()),
        }
        return ServerState(weights=weights, buffers=buffers, meta=meta), metrics


def _global_norm(tensors: Iterable[torch.Tensor]) -> float:
    return float(sum(float((t.double() ** 2).sum()) for t in tensors) ** 0.5)


# ---------------------------------------------------------------------------------------------------
# Client side: runs on the phone (inside agent.pyz) through client.CLIENT_ALGORITHMS["fedlaavg"].
# ---------------------------------------------------------------------------------------------------


def step_budget_config(config: Mapping[str, Any], num_samples: int) -> LocalTrainingConfig:
    """The round's settings as plain SGD (no proximal term). `local_steps` (if given) is a fixed budget
    of SGD steps — FedLaAvg's C, or SCAFFOLD's K — over as many (reshuffled) epochs as it takes;
    without it the job's `epochs` decide the number of steps. A `max_steps` below the budget (a
    straggler's cut) still stops the client early."""
    base = replace(LocalTrainingConfig.from_mapping(config), mu=0.0)
    local_steps = config.get("local_steps")
    if local_steps is None:
        return base
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ValueError(f"config local_steps must be a positive integer, got {local_steps!r}")
    epochs = -(-local_steps // steps_per_epoch(num_samples, base.batch_size))
    budget = local_steps if base.max_steps is None else min(local_steps, base.max_steps)
    return replace(base, epochs=epochs, max_steps=budget)


def budget_met(result: LocalTrainingResult, config: Mapping[str, Any]) -> LocalTrainingResult:
    """A round that ran its full `local_steps` budget is completed, not a straggler's partial work."""
    if result.stop_reason == "max_steps" and config.get("local_steps") == result.steps:
        return replace(result, stop_reason="completed")
    return result


def fedlaavg_client_train(task: ClientTask) -> LocalTrainingResult:
    """C local SGD steps (config `local_steps`, batch `batch_size`, step γ = `lr`) from x_r on the loss
    scaled by N·n_i/n (config `num_clients` = N, `total_samples` = n; n_i is this phone's shard size).
    Uploads the delta y_i − x_r; the server turns it into G_i."""
    if task.config.get("local_steps") is None:
        raise ValueError("FedLaAvg needs config local_steps (C, the local SGD steps per round)")
    num_clients = task.config.get("num_clients")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"config num_clients must be a positive integer, got {num_clients!r}")
    total_samples = task.config.get("total_samples")
    if total_samples is not None and (
        isinstance(total_samples, bool) or not isinstance(total_samples, int) or total_samples < 1
    ):
        raise ValueError(f"config total_samples must be a positive integer or null, got {total_samples!r}")
    model = model_for(task)
    weights = global_weights_for(model, task.received)
    config = step_budget_config(task.config, len(task.y))
    result = train_locally(
        model,
        task.x,
        task.y,
        config,
        weights,
        progress=task.progress,
        loss_scale=loss_scale(num_clients, len(task.y), total_samples),
        clock=task.clock,
    )
    return budget_met(result, task.config)
