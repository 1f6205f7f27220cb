"""The small interface every federated strategy implements (after Flower's `Strategy`).

A strategy is pure tensor maths: it never does I/O, never touches Django or ADB. The round engine
(training/engine/) owns I/O and calls these four methods in this order each round:

    chosen   = strategy.select(state, round_no, available, goal, rng)
    plan     = strategy.configure(state, round_no, chosen)         # what each phone receives
    ... the engine pushes plan[i].tensors + plan[i].config to phone i, the agent runs
        `client_train(...)` (training/fl/client.py) there, the engine pulls and validates the upload ...
    state, m = strategy.aggregate(state, round_no, updates, failures)

Failures are an input to aggregation, not an exception: a phone that dropped out, was late or sent a
rejected update is a `ClientFailure`. Strategies that need it (FedLaAvg keeps stale gradients, influence
needs to know who was selected) use it; the others ignore it.

Conventions shared by all strategies and the on-device agent:
- `Weights` maps parameter names (a torch `state_dict`'s keys) to float32 CPU tensors.
- A client uploads the *delta* of its local model, `y - x`, under the parameter names. Extra tensors a
  strategy needs travel under a dotted prefix of the strategy's own (e.g. SCAFFOLD's `scaffold.dc.<name>`).
- `ServerState.buffers` holds strategy-owned tensors that must survive a restart (SCAFFOLD's `c`,
  FedLaAvg's latest `G_i`); they are checkpointed with the weights as safetensors, so keys are strings.
- `ServerState.meta` holds JSON-able bookkeeping (e.g. each client's last participation round).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, Weights, validate_update


class Aggregator(Protocol):
    """Combines client deltas into one delta. FedAvg's weighted mean is one; robust rules (median,
    trimmed mean, Krum, clipping) are others, selectable per job."""

    def __call__(self, deltas: Sequence[Weights], sample_counts: Sequence[int]) -> Weights: ...


@dataclass(frozen=True)
class ClientInfo:
    """What the engine knows about a phone that could take part this round."""

    client_id: str
    num_samples: int
    last_round: int | None = None  # last round this client's update was aggregated; None = never


@dataclass
class ClientInstructions:
    """What one selected phone receives: tensors (safetensors on the wire) and a JSON config."""

    client_id: str
    tensors: Weights
    config: dict[str, Any]


@dataclass
class ClientUpdate:
    """A validated upload from one phone."""

    client_id: str
    num_samples: int
    tensors: Weights
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientFailure:
    """A phone that was selected but whose update is not used, and why."""

    client_id: str
    reason: str
    state: str = "failed"  # failed | late | rejected | dropped


@dataclass
class ServerState:
    weights: Weights
    buffers: Weights = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def same_for_all(
    state: ServerState, client_ids: Sequence[str], config: Mapping[str, Any]
) -> list[ClientInstructions]:
    """Instructions that send every chosen client the global weights and the same config."""
    return [
        ClientInstructions(client_id=cid, tensors=dict(state.weights), config=dict(config))
        for cid in client_ids
    ]


def round_counts(
    round_no: int, updates: Sequence[ClientUpdate], failures: Sequence[ClientFailure]
) -> dict[str, float]:
    """The counts every strategy records for a round; refuses two updates from one client, which
    would silently double its weight."""
    ids = [u.client_id for u in updates]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate client updates in round {round_no}: {sorted(ids)}")
    return {"num_reported": float(len(updates)), "num_failed": float(len(failures))}


class Strategy(ABC):
    """One module per strategy implements this; see the module docstring for the round order."""

    name: str = "abstract"

    def initial_state(self, weights: Weights) -> ServerState:
        return ServerState(weights={k: v.detach().clone() for k, v in weights.items()})

    def select(
        self,
        state: ServerState,
        round_no: int,
        available: Sequence[ClientInfo],
        goal: int,
        rng: random.Random,
    ) -> list[str]:
        """Pick up to `goal` client ids among `available` (default: uniformly at random)."""
        ids = sorted(c.client_id for c in available)
        return rng.sample(ids, min(goal, len(ids)))

    @abstractmethod
    def configure(
        self, state: ServerState, round_no: int, client_ids: Sequence[str], base_config: Mapping[str, Any]
    ) -> list[ClientInstructions]:
        """What each chosen client receives. `base_config` carries the job's local-training settings."""

    @abstractmethod
    def aggregate(
        self,
        state: ServerState,
        round_no: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[ClientFailure],
    ) -> tuple[ServerState, dict[str, float]]:
        """Fold this round's updates into a new state; return it and metrics worth recording."""

    def expected_upload(self, weights: Weights) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Names, shapes and dtypes a valid upload must have (the engine checks every update against it)."""
        return {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}

    def validate_upload(
        self,
        state: ServerState,
        client_id: str,
        tensors: Mapping[str, torch.Tensor],
        num_samples: int | None = None,
    ) -> list[str]:
        """Reasons to reject one client's upload (empty: accept). The default checks it against
        `expected_upload`: exactly those names, shapes and dtypes, every value finite. Strategies whose
        uploads differ per client (sparse submodel rows) override this."""
        return validate_update(
            tensors, self.expected_upload(state.weights), max_bytes=DEFAULT_MAX_UPDATE_BYTES
        )
