"""Run a whole federated job in-process, with no phones: the ground-truth harness.

It drives the real `Strategy` and the real client code (`client_train`, the function the agent runs on a
phone) round after round, so a simulated job and a job on phones with the same seeds compute the same
models. It is what benchmarks and the exact leave-one-out replay (ALGORITHMS.md §5) build on:

    base = simulate(config)                                    # remembers every round's selection
    loo  = simulate(config, selections=base.selections(), exclude={"c007"})
    # loo.final_state.weights = w_T with c007 removed from every round, everything else identical

Replays are exact because every random choice has its own derived seed: selection from (seed, round),
each client's shuffling from (seed, round, client), stragglers from (seed, round) over the *selected* set.
Removing a client changes nothing else.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.fl.client import HONEST, ClientTask, TrainingDiverged, client_config_for_round, client_train
from training.fl.datasets import DatasetSplits, load_dataset
from training.fl.evaluate import evaluate
from training.fl.nets import build_model_from_spec, initial_weights, model_spec_for, set_weights
from training.fl.partition import partition_dataset
from training.fl.registry import JobContext, make_strategy
from training.fl.seeding import derive_seed
from training.fl.strategy import ClientFailure, ClientInfo, ClientUpdate, ServerState, Strategy
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, validate_update


@dataclass(frozen=True)
class SimulationConfig:
    """A federated job, minus the phones. The defaults are the platform's: FedAvg with the 64-200-200-10
    MLP on digits, 20 IID clients, 10 per round, reaching ≥ 90% test accuracy well within 30 rounds."""

    dataset: str = "digits"
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    data_seed: int = 0  # fixes the data and the train/test split (share it to compare jobs)
    partition: str = "iid"
    partition_params: Mapping[str, Any] = field(default_factory=dict)
    num_clients: int = 20
    clients_per_round: int = 10
    rounds: int = 30
    model: str = "mlp"
    model_params: Mapping[str, Any] = field(default_factory=dict)
    algorithm: str = "fedavg"
    algorithm_params: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 0.1
    epochs: int = 5
    batch_size: int = 10
    max_steps: int | None = None
    straggler_fraction: float = 0.0  # share of each round's clients that stop after a random step count
    seed: int = 0  # the job seed: initial model, selection, local shuffling, stragglers
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.num_clients < 1 or self.clients_per_round < 1 or self.rounds < 0:
            raise ValueError("num_clients and clients_per_round must be >= 1 and rounds >= 0")
        if not 0.0 <= self.straggler_fraction <= 1.0:
            raise ValueError(f"straggler_fraction must be in [0, 1], got {self.straggler_fraction}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimulationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown simulation settings: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in asdict(self).items()}

    def base_client_config(self, model_spec: Mapping[str, Any]) -> dict[str, Any]:
        """The local-training settings every client gets (strategies add theirs in `configure`)."""
        config: dict[str, Any] = {
            "model": dict(model_spec),
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
        if self.max_steps is not None:
            config["max_steps"] = self.max_steps
        return config


def client_id(index: int) -> str:
    return f"c{index:03d}"


@dataclass
class FederatedSetup:
    """Everything a job needs before round 1, derived deterministically from the config."""

    config: SimulationConfig
    data: DatasetSplits
    client_ids: list[str]
    client_indices: dict[str, np.ndarray]  # client -> indices into data.train
    model_spec: dict[str, Any]
    strategy: Strategy

    def client_data(self, cid: str) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(self.client_indices[cid])
        return self.data.train.x[index], self.data.train.y[index]

    def initial_state(self) -> ServerState:
        return self.strategy.initial_state(initial_weights(self.model_spec, seed=self.config.seed))


def prepare(config: SimulationConfig, *, data: DatasetSplits | None = None) -> FederatedSetup:
    """Load (or reuse) the data set, partition it, describe the model and build the strategy."""
    data = (
        data
        if data is not None
        else load_dataset(config.dataset, seed=config.data_seed, **config.dataset_params)
    )
    parts = partition_dataset(
        config.partition, data.train, config.num_clients, seed=config.data_seed, **config.partition_params
    )
    ids = [client_id(k) for k in range(len(parts))]
    spec = model_spec_for(
        config.model, input_shape=data.feature_shape, num_classes=data.num_classes, **config.model_params
    )
    build_model_from_spec(spec)  # fail now, with the model's own message, rather than in round 1
    context = JobContext(
        num_clients=len(ids),
        lr=config.lr,
        total_samples=len(data.train),
        clients_per_round=config.clients_per_round,
    )
    strategy = make_strategy(config.algorithm, config.algorithm_params, context)
    return FederatedSetup(config, data, ids, dict(zip(ids, parts, strict=True)), spec, strategy)


@dataclass
class RoundRecord:
    round_no: int
    selected: list[str]
    reported: list[str]
    failed: dict[str, str]  # client -> reason
    metrics: dict[str, float]


@dataclass(frozen=True)
class RoundTrace:
    """Handed to `on_round` after each round: enough to recompute or analyse the round (influence)."""

    record: RoundRecord
    state_before: ServerState
    state_after: ServerState
    updates: Sequence[ClientUpdate]
    failures: Sequence[ClientFailure]


@dataclass
class SimulationResult:
    config: SimulationConfig
    rounds: list[RoundRecord]
    final_state: ServerState
    initial_metrics: dict[str, float]

    def selections(self) -> list[list[str]]:
        return [list(r.selected) for r in self.rounds]

    def accuracies(self) -> list[float]:
        return [r.metrics["accuracy"] for r in self.rounds if "accuracy" in r.metrics]

    def rounds_to_accuracy(self, target: float) -> int | None:
        """The first round whose test accuracy reached `target`, or None."""
        for r in self.rounds:
            if r.metrics.get("accuracy", -1.0) >= target:
                return r.round_no
        return None


def simulate(
    config: SimulationConfig,
    *,
    setup: FederatedSetup | None = None,
    selections: Sequence[Sequence[str]] | None = None,
    exclude: Collection[str] = (),
    behaviours: Mapping[str, str] | None = None,
    on_round: Callable[[RoundTrace], None] | None = None,
    state_root: Path | None = None,
) -> SimulationResult:
    """Run `config.rounds` rounds and return per-round metrics and the final server state.

    selections: a fixed list of selected client ids per round (replay); otherwise the strategy selects
        among all clients not in `exclude`.
    exclude: clients whose updates never enter the model. With fixed selections they are dropped from
        each round's selected set (they do not train), leaving everyone else's work unchanged.
    behaviours: client -> misbehaviour name (default "honest"), as FEDFLEET_BEHAVIOUR would on a phone.
    state_root: where clients keep state between rounds (one subdirectory each); a temporary
        directory by default.
    """
    setup = setup if setup is not None else prepare(config)
    if selections is not None and len(selections) < config.rounds:
        raise ValueError(f"selections cover {len(selections)} rounds, the job has {config.rounds}")
    unknown = sorted(set(exclude) - set(setup.client_ids))
    if unknown:
        raise ValueError(f"exclude names unknown clients: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="fedfleet-sim-") as tmp:
        root = state_root if state_root is not None else Path(tmp)
        return _run(setup, selections, set(exclude), dict(behaviours or {}), on_round, root)


def _run(
    setup: FederatedSetup,
    selections: Sequence[Sequence[str]] | None,
    exclude: set[str],
    behaviours: dict[str, str],
    on_round: Callable[[RoundTrace], None] | None,
    state_root: Path,
) -> SimulationResult:
    config, strategy = setup.config, setup.strategy
    state = setup.initial_state()
    eval_model = build_model_from_spec(setup.model_spec)
    test = setup.data.test
    base_config = config.base_client_config(setup.model_spec)
    last_round: dict[str, int] = {}
    records: list[RoundRecord] = []

    def evaluate_state(s: ServerState) -> dict[str, float]:
        set_weights(eval_model, {k: s.weights[k] for k in eval_model.state_dict()})
        result = evaluate(eval_model, test.x, test.y)
        return {"accuracy": result.accuracy, "loss": result.loss}

    initial_metrics = evaluate_state(state)
    for round_no in range(1, config.rounds + 1):
        started = time.perf_counter()
        if selections is not None:
            selected = [str(c) for c in selections[round_no - 1]]
        else:
            available = [
                ClientInfo(cid, len(setup.client_indices[cid]), last_round.get(cid))
                for cid in setup.client_ids
                if cid not in exclude
            ]
            rng = random.Random(derive_seed("select", config.seed, round_no))
            selected = strategy.select(state, round_no, available, config.clients_per_round, rng)
        stragglers = _straggler_budgets(setup, selected, round_no)
        training = [cid for cid in selected if cid not in exclude]
        plan = strategy.configure(state, round_no, training, base_config)
        updates: list[ClientUpdate] = []
        failures: list[ClientFailure] = []
        expected = strategy.expected_upload(state.weights)
        for instructions in plan:
            cid = instructions.client_id
            client_config = client_config_for_round(
                instructions.config, job_seed=config.seed, round_no=round_no, client_id=cid
            )
            if cid in stragglers:
                client_config["max_steps"] = stragglers[cid]
            x, y = setup.client_data(cid)
            task = ClientTask(
                config=client_config,
                received=instructions.tensors,
                x=x,
                y=y,
                state_dir=state_root / cid,
                behaviour=behaviours.get(cid, HONEST),
            )
            try:
                result = client_train(task)
            except TrainingDiverged as exc:
                failures.append(ClientFailure(cid, str(exc), "failed"))
                continue
            upload = result.upload()
            errors = validate_update(upload, expected, max_bytes=DEFAULT_MAX_UPDATE_BYTES)
            if errors:
                failures.append(ClientFailure(cid, "; ".join(errors), "rejected"))
                continue
            updates.append(ClientUpdate(cid, result.num_samples, upload, result.metrics()))
        state_before = state
        state, strategy_metrics = strategy.aggregate(state, round_no, updates, failures)
        for update in updates:
            last_round[update.client_id] = round_no
        metrics = dict(strategy_metrics)
        if round_no % config.eval_every == 0 or round_no == config.rounds:
            metrics.update(evaluate_state(state))
        metrics["round_time_s"] = time.perf_counter() - started
        record = RoundRecord(
            round_no=round_no,
            selected=list(selected),
            reported=[u.client_id for u in updates],
            failed={f.client_id: f.reason for f in failures},
            metrics=metrics,
        )
        records.append(record)
        if on_round is not None:
            on_round(RoundTrace(record, state_before, state, updates, failures))
    return SimulationResult(config, records, state, initial_metrics)


def _straggler_budgets(setup: FederatedSetup, selected: Sequence[str], round_no: int) -> dict[str, int]:
    """FedProx-style stragglers: a share of the selected clients stop after a uniformly random number of
    steps short of their full work. Drawn over the *selected* set so that excluding a client in a replay
    leaves everyone else's budget unchanged."""
    config = setup.config
    count = round(config.straggler_fraction * len(selected))
    if count == 0:
        return {}
    rng = random.Random(derive_seed("stragglers", config.seed, round_no))
    budgets = {}
    for cid in rng.sample(sorted(selected), count):
        full = -(-len(setup.client_indices[cid]) // config.batch_size) * config.epochs
        if config.max_steps is not None:
            full = min(full, config.max_steps)
        budgets[cid] = rng.randint(1, max(1, full - 1))
    return budgets
