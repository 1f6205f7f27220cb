"""Local training: what a phone does with the global model, its data shard and the round's config.

Two layers:

- `train_locally(model, x, y, config, global_weights, ...)` — the SGD loop every client algorithm shares:
  E epochs of minibatch SGD (batch B, step size η) from the global weights w_t, optionally with FedProx's
  proximal term (each step w ← w − η(∇F_k(w) + μ(w − w_t))), a per-step gradient correction (SCAFFOLD's
  c − c_i) and a loss scale (FedLaAvg's N·n_i/n). Stragglers stop early at `max_steps` or `deadline_s`
  and report the partial work they did. Returns the delta y − x under the parameter names plus metrics.
- `client_train(task)` — the entry point the agent and the simulator call: dispatches on
  `config["algorithm"]` through `CLIENT_ALGORITHMS`, wraps the algorithm with the misbehaviour hook, and
  refuses to return a non-finite update.

Other modules add client sides by registering in `CLIENT_ALGORITHMS` (e.g. "scaffold", "fedlaavg"). A client
algorithm receives a `ClientTask` — the full round config, every tensor the server sent (global weights and
strategy extras such as `scaffold.c.<name>`), the shard, a persistent per-client `state_dir` (on a phone it
survives between rounds; SCAFFOLD keeps c_i there) and the progress callback — and returns a
`LocalTrainingResult` whose `extra` tensors are uploaded alongside the delta.

Determinism: batches are drawn from a torch Generator seeded with `config.seed`; the model's initial
weights are the global weights; nothing reads the global RNG. Same inputs + same seed = same delta
(on the same torch build and thread count).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.fl.evaluate import mean_loss
from training.fl.nets import build_model_from_spec, set_weights
from training.fl.seeding import derive_seed
from training.fl.strategy import Weights

BEHAVIOUR_ENV = "FEDFLEET_BEHAVIOUR"
HONEST = "honest"
MISBEHAVIOUR_MODULE = "training.fl.misbehaviour"


class TrainingDiverged(RuntimeError):
    """The loss or the update became NaN/inf; the update must not be sent."""


@dataclass(frozen=True)
class LocalTrainingConfig:
    """The local-training part of a round config (config.json keys of the same names)."""

    lr: float
    epochs: int = 1
    batch_size: int = 10
    mu: float = 0.0  # FedProx proximal coefficient; 0 = plain FedAvg
    seed: int = 0
    max_steps: int | None = None  # straggler / fixed-step budget: stop after this many SGD steps
    deadline_s: float | None = None  # straggler: stop once this much wall time has passed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ValueError(f"mu must be >= 0, got {self.mu}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 when given, got {self.max_steps}")
        if self.deadline_s is not None and not self.deadline_s >= 0:
            raise ValueError(f"deadline_s must be >= 0 when given, got {self.deadline_s}")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> LocalTrainingConfig:
        """Read the known keys from a round config (others are ignored), type-checked with clear errors."""
        if "lr" not in config:
            raise ValueError("config has no lr")
        return cls(
            lr=_number(config, "lr"),
            epochs=_integer(config, "epochs", 1),
            batch_size=_integer(config, "batch_size", 10),
            mu=_number(config, "mu", 0.0),
            seed=_integer(config, "seed", 0),
            max_steps=_optional_integer(config, "max_steps"),
            deadline_s=_optional_number(config, "deadline_s"),
        )


def _number(config: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config {key} must be a number, got {value!r}")
    return float(value)


def _integer(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config {key} must be an integer, got {value!r}")
    return value


def _optional_integer(config: Mapping[str, Any], key: str) -> int | None:
    return None if config.get(key) is None else _integer(config, key, 0)


def _optional_number(config: Mapping[str, Any], key: str) -> float | None:
    return None if config.get(key) is None else _number(config, key)


@dataclass(frozen=True)
class Progress:
    epoch: int  # 1-based epoch this step belongs to
    step: int  # steps done so far (1-based)
    steps: int  # steps planned (E·⌈n/B⌉, capped by max_steps)
    loss: float  # this minibatch's data loss (without the proximal term)
    step_time_s: float
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class LocalTrainingResult:
    delta: Weights  # y − x under the parameter names
    num_samples: int  # n_k, the weight of this update in FedAvg
    steps: int
    planned_steps: int
    epochs_done: float  # steps / steps per epoch (e.g. 1.5 = one and a half epochs)
    loss_before: float  # mean loss on the local data at the global weights
    loss_after: float  # ... and at the trained weights
    train_time_s: float
    stop_reason: str  # "completed" | "max_steps" | "deadline"
    extra: Weights = field(default_factory=dict)  # strategy tensors uploaded with the delta (prefixed names)

    @property
    def completed(self) -> bool:
        return self.stop_reason == "completed"

    def upload(self) -> Weights:
        """Everything the phone sends back: the delta and any strategy extras."""
        return {**self.delta, **self.extra}

    def metrics(self) -> dict[str, float]:
        return {
            "samples": float(self.num_samples),
            "steps": float(self.steps),
            "planned_steps": float(self.planned_steps),
            "epochs_done": self.epochs_done,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "train_time_s": self.train_time_s,
            "completed": 1.0 if self.completed else 0.0,
        }


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """⌈n/B⌉: the last, smaller batch is kept (every sample is seen once per epoch)."""
    return -(-num_samples // batch_size)


def train_locally(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: LocalTrainingConfig,
    global_weights: Mapping[str, torch.Tensor],
    *,
    progress: ProgressCallback | None = None,
    gradient_correction: Mapping[str, torch.Tensor] | None = None,
    loss_scale: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> LocalTrainingResult:
    """Minibatch SGD from `global_weights`; see the module docstring. `model` is overwritten."""
    if len(y) == 0:
        raise ValueError("no local training data")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    set_weights(model, global_weights)
    params = dict(model.named_parameters())
    anchor = {name: global_weights[name].detach().clone() for name in params}  # w_t, for μ(w − w_t)
    correction = _check_correction(gradient_correction, params)

    n = len(y)
    per_epoch = steps_per_epoch(n, config.batch_size)
    planned = per_epoch * config.epochs
    if config.max_steps is not None:
        planned = min(planned, config.max_steps)
    loss_before = mean_loss(model, x, y)
    generator = torch.Generator().manual_seed(config.seed)

    start = clock()
    wall_start = time.perf_counter()
    steps = 0
    stop_reason = "completed"
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=generator)
        for batch_start in range(0, n, config.batch_size):
            step_start = time.perf_counter()
            index = order[batch_start : batch_start + config.batch_size]
            loss = _sgd_step(model, params, x[index], y[index], config, anchor, correction, loss_scale)
            steps += 1
            if progress is not None:
                now = time.perf_counter()
                progress(Progress(epoch, steps, planned, loss, now - step_start, now - wall_start))
            if steps >= planned:
                stop_reason = "completed" if planned == per_epoch * config.epochs else "max_steps"
                break
            if config.deadline_s is not None and clock() - start >= config.deadline_s:
                stop_reason = "deadline"
                break
        if stop_reason != "completed" or steps >= planned:
            break
    train_time = time.perf_counter() - wall_start

    trained = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    delta = {name: (trained[name] - global_weights[name]).to(torch.float32) for name in global_weights}
    return LocalTrainingResult(
        delta=delta,
        num_samples=n,
        steps=steps,
        planned_steps=planned,
        epochs_done=steps / per_epoch,
        loss_before=loss_before,
        loss_after=mean_loss(model, x, y),
        train_time_s=train_time,
        stop_reason=stop_reason,
    )


def _check_correction(
    correction: Mapping[str, torch.Tensor] | None, params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    if correction is None:
        return {}
    missing = sorted(set(params) - set(correction))
    if missing:
        raise ValueError(f"gradient correction lacks {', '.join(missing)}")
    return {name: correction[name].detach().to(torch.float32) for name in params}


def _sgd_step(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    config: LocalTrainingConfig,
    anchor: Mapping[str, torch.Tensor],
    correction: Mapping[str, torch.Tensor],
    loss_scale: float,
) -> float:
    """One step w ← w − η(s·∇F(w) + μ(w − w_t) + correction); returns the minibatch data loss."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(xb), yb)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss became {value} (try a smaller learning rate)")
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    with torch.no_grad():
        for name, p in params.items():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if config.mu:
                grad = grad + config.mu * (p - anchor[name])
            if correction:
                grad = grad + correction[name]
            p.add_(grad, alpha=-config.lr)
    return value


# ---------------------------------------------------------------------------------------------------------
# Client algorithms and the entry point
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTask:
    """Everything a client algorithm gets for one round."""

    config: Mapping[str, Any]  # the round's config.json
    received: Mapping[str, torch.Tensor]  # global weights + strategy extras, as the server sent them
    x: torch.Tensor
    y: torch.Tensor
    state_dir: Path | None = None  # persistent per-client directory (None: the client keeps no state)
    progress: ProgressCallback | None = None
    behaviour: str = HONEST  # misbehaviour name (virtual phones set FEDFLEET_BEHAVIOUR)
    clock: Callable[[], float] = time.monotonic


ClientAlgorithm = Callable[[ClientTask], LocalTrainingResult]


def model_for(task: ClientTask) -> nn.Module:
    if "model" not in task.config:
        raise ValueError("config has no model spec")
    return build_model_from_spec(task.config["model"])


def global_weights_for(model: nn.Module, received: Mapping[str, torch.Tensor]) -> Weights:
    """The entries of `received` that are the model's own parameters (the rest are strategy extras)."""
    names = list(model.state_dict())
    missing = [name for name in names if name not in received]
    if missing:
        raise ValueError(f"global weights lack {', '.join(missing)}")
    return {name: received[name] for name in names}


def fedavg_client(task: ClientTask) -> LocalTrainingResult:
    """FedAvg: plain local SGD (μ in the config, if any, is ignored)."""
    model = model_for(task)
    config = replace(LocalTrainingConfig.from_mapping(task.config), mu=0.0)
    weights = global_weights_for(model, task.received)
    return train_locally(model, task.x, task.y, config, weights, progress=task.progress, clock=task.clock)


def fedprox_client(task: ClientTask) -> LocalTrainingResult:
    """FedProx: local SGD with the proximal term μ/2‖w − w_t‖² (config `mu`)."""
    model = model_for(task)
    config = LocalTrainingConfig.from_mapping(task.config)
    weights = global_weights_for(model, task.received)
    return train_locally(model, task.x, task.y, config, weights, progress=task.progress, clock=task.clock)


def _client_side(module: str, function: str) -> ClientAlgorithm:
    """A client side that lives in its strategy's module, imported on first use: those modules build on
    this one, so importing them here at load time would be circular."""

    def run(task: ClientTask) -> LocalTrainingResult:
        algorithm: ClientAlgorithm = getattr(importlib.import_module(module), function)
        return algorithm(task)

    return run


# algorithm name (config["algorithm"]) -> client side. Other modules add theirs.
CLIENT_ALGORITHMS: dict[str, ClientAlgorithm] = {
    "fedavg": fedavg_client,
    "fedprox": fedprox_client,
    "scaffold": _client_side("training.fl.scaffold", "scaffold_client_train"),
    "fedlaavg": _client_side("training.fl.fedlaavg", "fedlaavg_client_train"),
    # CTR submodels (FedSubAvg) and the full-model FedAvg baseline share one client side.
    "fedsubavg": _client_side("training.fl.fedsubavg", "fedsubavg_client_train"),
}


def client_train(task: ClientTask) -> LocalTrainingResult:
    """Run the round's client algorithm with the misbehaviour hook; never returns a non-finite upload."""
    name = task.config.get("algorithm")
    if not isinstance(name, str) or name not in CLIENT_ALGORITHMS:
        known = ", ".join(sorted(CLIENT_ALGORITHMS))
        raise ValueError(f"unknown algorithm {name!r}; this agent knows: {known}")
    algorithm = CLIENT_ALGORITHMS[name]
    if task.behaviour == HONEST:
        result = algorithm(task)
    else:
        result = _train_misbehaving(algorithm, task)
    _check_finite(result.upload())
    return result


def _check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    bad = sorted(
        name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    )
    if bad:
        raise TrainingDiverged(f"update has non-finite values in {', '.join(bad)}")


def _train_misbehaving(algorithm: ClientAlgorithm, task: ClientTask) -> LocalTrainingResult:
    """The misbehaviour hook (training/fl/misbehaviour.py, written separately). Its contract:

        apply_behaviour(name, x, y, delta, *, phase, config, global_weights, rng)
            -> tuple[x, y, delta]

    called twice: phase="data" before training (delta is None; may return poisoned x, y — label flip,
    backdoor) and phase="update" after training (may return a replaced delta — model replacement, noise,
    free-rider). `rng` is a numpy Generator seeded from the round's seed, so misbehaviour is reproducible.
    """
    try:
        module = importlib.import_module(MISBEHAVIOUR_MODULE)
    except ModuleNotFoundError:
        raise ValueError(
            f"behaviour {task.behaviour!r} requested but this agent has no misbehaviour module"
        ) from None
    apply: Callable[..., tuple[torch.Tensor, torch.Tensor, Weights | None]] = module.apply_behaviour
    seed = derive_seed("behaviour", task.config.get("seed", 0))
    rng = np.random.default_rng(seed)
    weights = dict(task.received)
    x, y, _ = apply(
        task.behaviour,
        task.x,
        task.y,
        None,
        phase="data",
        config=task.config,
        global_weights=weights,
        rng=rng,
    )
    result = algorithm(replace(task, x=x, y=y))
    _, _, delta = apply(
        task.behaviour,
        x,
        y,
        result.delta,
        phase="update",
        config=task.config,
        global_weights=weights,
        rng=rng,
    )
    if delta is None:
        raise ValueError(f"behaviour {task.behaviour!r} returned no update")
    return replace(result, delta=dict(delta))


def client_config_for_round(
    base: Mapping[str, Any], *, job_seed: int, round_no: int, client_id: str
) -> dict[str, Any]:
    """A strategy's per-client config made concrete for one round: adds `round`, `client_id` and the
    client's own `seed` = derive_seed(job seed, round, client). The engine and the simulator both call
    this, so a phone and its simulated twin shuffle their data identically."""
    return {
        **base,
        "round": round_no,
        "client_id": client_id,
        "seed": derive_seed("client", job_seed, round_no, client_id),
    }
