"""Misbehaving clients (ALGORITHMS.md §7), executed by the agent on a (virtual) phone.

The platform is never told which phones misbehave: a phone's behaviour comes from its own environment,
``FEDFLEET_BEHAVIOUR``, which the virtual lab sets per phone. client.py calls `apply_behaviour(spec, ...,
phase="data"|"update")` around local training; underneath, a parsed plan does the work in two places:

    plan = behaviour_from_env()                        # or parse_behaviour("backdoor:target=0,fraction=0.3")
    x, y = plan.transform_data(x, y, num_classes=C, seed=round_seed)        # before local training
    ... local training produces delta = y_local - w_t ...
    delta = plan.transform_update(delta, seed=round_seed, clients_per_round=K, server_lr=eta_g)  # after

Spec syntax (either form):
- ``name:key=value,key=value`` — e.g. ``backdoor:target=0,fraction=0.3``; behaviours compose with ``+``,
  e.g. ``backdoor:target=0,fraction=0.5+model_replacement:gamma=10`` (the classic model-replacement attack:
  train on poisoned data, then scale the update).
- JSON: ``{"name": "noise", "std": 0.5}`` or a list of such objects.

Behaviours and their parameters (defaults in brackets):
- ``honest``: nothing.
- ``label_flip``: train on permuted labels. ``mapping`` [reverse]: ``reverse`` y → C−1−y, ``shift`` y → y+1
  mod C, ``random`` a seeded fixed-point-free permutation (``seed`` [0]); ``fraction`` [1.0] of samples.
- ``backdoor``: stamp a trigger on ``fraction`` [0.3] of the samples and relabel them ``target`` [0].
  The trigger is a ``size``×``size`` [2] square in the bottom-right corner of the image (flat inputs whose
  length is a square are viewed as square images, other flat inputs get their last size² features set),
  set to ``value`` [the maximum of the data being stamped: 1.0 for the digits].
- ``model_replacement``: submit γ(X − w_t) + w_t, i.e. the delta times ``gamma``
  [clients per round / server learning rate, from the round's context].
- ``noise``: a Gaussian delta with std ``std`` [0.1]; ``mode`` [replace] or ``add`` to the honest delta.
- ``free_rider``: a zero delta (w_t unchanged); the agent may skip training (`skips_training`).
- ``inflate_samples``: an honest update whose result claims ``factor`` [10⁶] times the samples it holds
  (to outweigh everyone in a sample-weighted average; the platform weighs by its own record instead).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training.fl.strategy import Weights

BEHAVIOUR_ENV = "FEDFLEET_BEHAVIOUR"

# name -> {parameter: default}. `None` means "derived at run time" (see the module docstring).
BEHAVIOUR_PARAMS: dict[str, dict[str, Any]] = {
    "honest": {},
    "label_flip": {"mapping": "reverse", "fraction": 1.0, "seed": 0},
    "backdoor": {"target": 0, "fraction": 0.3, "size": 2, "value": None},
    "model_replacement": {"gamma": None},
    "noise": {"std": 0.1, "mode": "replace"},
    "free_rider": {},
    "inflate_samples": {"factor": 1_000_000},
}
BEHAVIOUR_NAMES: tuple[str, ...] = tuple(BEHAVIOUR_PARAMS)
LABEL_MAPPINGS = ("reverse", "shift", "random")


class BehaviourError(ValueError):
    """A behaviour spec that cannot be parsed or has invalid parameters."""


# ---------------------------------------------------------------------------------------------------------
# The trigger pattern (shared by the poisoning client and the server's attack-success metric).
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A square patch in the bottom-right corner, set to `value` (None: the max of the stamped data)."""

    size: int = 2
    value: float | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of `x` (n, *features) with the trigger stamped on every row."""
        if x.ndim < 2:
            raise BehaviourError("trigger: x must be (n, *features)")
        stamped = x.clone()
        value = float(x.max()) if self.value is None else float(self.value)
        if stamped.ndim >= 3:  # (n, ..., H, W) images
            stamped[..., -self.size :, -self.size :] = value
            return stamped
        width = math.isqrt(stamped.shape[1])
        if width * width == stamped.shape[1] and width >= self.size:  # flat square image, e.g. 64 = 8×8
            view = stamped.view(stamped.shape[0], width, width)
            view[:, -self.size :, -self.size :] = value
        else:  # a feature pattern for tabular inputs
            stamped[:, -self.size * self.size :] = value
        return stamped


def backdoor_success_rate(
    model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, trigger: Trigger, target: int
) -> float:
    """Fraction of test samples *not* of the target class that the model labels `target` once triggered."""
    keep = y_test != target
    if not bool(keep.any()):
        raise ValueError("backdoor_success_rate: every test sample already has the target label")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            predictions = model(trigger.apply(x_test[keep])).argmax(dim=1)
    finally:
        model.train(was_training)
    return float((predictions == target).float().mean())


# ---------------------------------------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


def _coerce(text: str) -> Any:
    """`key=value` values: JSON scalars where they parse (0, 0.3, true, null), else the bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _validated(name: str, params: Mapping[str, Any]) -> Behaviour:
    if name not in BEHAVIOUR_PARAMS:
        raise BehaviourError(f"unknown behaviour {name!r}; choose one of {', '.join(BEHAVIOUR_NAMES)}")
    defaults = BEHAVIOUR_PARAMS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise BehaviourError(f"behaviour {name!r} does not take {', '.join(unknown)}")
    merged = {**defaults, **params}
    _check_params(name, merged)
    return Behaviour(name, merged)


def _check_params(name: str, p: Mapping[str, Any]) -> None:
    def fraction_ok(v: Any) -> bool:
        return isinstance(v, int | float) and 0.0 <= float(v) <= 1.0

    problems = {
        "label_flip": [
            (p.get("mapping") in LABEL_MAPPINGS, f"mapping must be one of {LABEL_MAPPINGS}"),
            (fraction_ok(p.get("fraction")), "fraction must be in [0, 1]"),
            (isinstance(p.get("seed"), int), "seed must be an integer"),
        ],
        "backdoor": [
            (isinstance(p.get("target"), int) and p["target"] >= 0, "target must be a class index"),
            (fraction_ok(p.get("fraction")), "fraction must be in [0, 1]"),
            (isinstance(p.get("size"), int) and p["size"] >= 1, "size must be a positive integer"),
            (p.get("value") is None or isinstance(p["value"], int | float), "value must be a number"),
        ],
        "model_replacement": [
            (p.get("gamma") is None or (isinstance(p["gamma"], int | float) and p["gamma"] > 0), "gamma > 0"),
        ],
        "inflate_samples": [
            (isinstance(p.get("factor"), int) and p["factor"] >= 1, "factor must be an integer >= 1"),
        ],
        "noise": [
            (isinstance(p.get("std"), int | float) and p["std"] >= 0, "std must be >= 0"),
            (p.get("mode") in ("replace", "add"), "mode must be replace or add"),
        ],
    }.get(name, [])
    for ok, message in problems:
        if not ok:
            raise BehaviourError(f"{name}: {message}")


def _parse_text_item(item: str) -> Behaviour:
    name, _, rest = item.strip().partition(":")
    params: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BehaviourError(f"expected key=value in {item!r}, got {pair!r}")
        params[key.strip()] = _coerce(value.strip())
    return _validated(name.strip(), params)


def _parse_json_item(item: Any) -> Behaviour:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise BehaviourError('JSON behaviours are objects with a "name"')
    return _validated(item["name"], {k: v for k, v in item.items() if k != "name"})


def parse_behaviour(spec: str | Mapping[str, Any] | list[Any] | None) -> BehaviourPlan:
    """Parse a behaviour spec (text, JSON text, or already-decoded JSON); empty/None means honest."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return BehaviourPlan(())
    if isinstance(spec, str):
        text = spec.strip()
        if text[0] in "[{":
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BehaviourError(f"behaviour JSON does not parse: {exc}") from exc
        else:
            return BehaviourPlan(tuple(_parse_text_item(item) for item in text.split("+")))
    items = spec if isinstance(spec, list) else [spec]
    return BehaviourPlan(tuple(_parse_json_item(item) for item in items))


def behaviour_from_env(environ: Mapping[str, str] | None = None) -> BehaviourPlan:
    """The phone's own behaviour (``FEDFLEET_BEHAVIOUR``); honest when unset."""
    return parse_behaviour((os.environ if environ is None else environ).get(BEHAVIOUR_ENV))


# ---------------------------------------------------------------------------------------------------------
# Data-side transforms (before local training).
# ---------------------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def _chosen_rows(n: int, fraction: float, seed: int) -> torch.Tensor:
    """round(fraction·n) distinct row indices, seeded."""
    count = int(round(fraction * n))
    return torch.randperm(n, generator=_generator(seed))[:count]


def label_permutation(mapping: str, num_classes: int, seed: int = 0) -> torch.Tensor:
    """perm[c] is the label a sample of class c gets. `shift` and `random` move every class; `reverse`
    (y -> C-1-y) leaves the middle class alone when C is odd."""
    classes = torch.arange(num_classes)
    if mapping == "reverse":
        return num_classes - 1 - classes
    if mapping == "shift":
        return (classes + 1) % num_classes
    if mapping == "random":
        # A random cyclic order is a permutation without fixed points (a derangement).
        order = torch.randperm(num_classes, generator=_generator(seed))
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)
        return perm
    raise BehaviourError(f"label_flip: unknown mapping {mapping!r}")


def _label_flip(p: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> Any:
    perm = label_permutation(p["mapping"], num_classes, p["seed"])
    flipped = y.clone()
    rows = _chosen_rows(len(y), float(p["fraction"]), seed)
    flipped[rows] = perm[y[rows]]
    return x, flipped


def _backdoor(p: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> Any:
    if p["target"] >= num_classes:
        raise BehaviourError(f"backdoor: target {p['target']} is not one of the {num_classes} classes")
    trigger = Trigger(size=int(p["size"]), value=p["value"])
    rows = _chosen_rows(len(y), float(p["fraction"]), seed)
    poisoned_x, poisoned_y = x.clone(), y.clone()
    if len(rows):
        # The value defaults to the max of the *whole* local data, so poisoned rows match test-time stamps.
        value = float(x.max()) if trigger.value is None else trigger.value
        poisoned_x[rows] = Trigger(trigger.size, value).apply(x[rows])
        poisoned_y[rows] = int(p["target"])
    return poisoned_x, poisoned_y


def trigger_of(plan: BehaviourPlan) -> tuple[Trigger, int] | None:
    """The (trigger, target) of a plan's backdoor, for measuring attack success; None if it has none."""
    for b in plan.behaviours:
        if b.name == "backdoor":
            return Trigger(size=int(b.params["size"]), value=b.params["value"]), int(b.params["target"])
    return None


# ---------------------------------------------------------------------------------------------------------
# Update-side transforms (after local training). Only float tensors are touched.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateContext:
    seed: int
    clients_per_round: int | None = None
    server_lr: float = 1.0


def _map_floats(delta: Weights, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Weights:
    return {k: (fn(k, v).to(v.dtype) if v.is_floating_point() else v.clone()) for k, v in delta.items()}


def replacement_gamma(p: Mapping[str, Any], ctx: UpdateContext) -> float:
    if p["gamma"] is not None:
        return float(p["gamma"])
    if ctx.clients_per_round is None:
        raise BehaviourError("model_replacement: set gamma, or pass clients_per_round to derive it")
    return ctx.clients_per_round / ctx.server_lr


def _model_replacement(p: Mapping[str, Any], delta: Weights, ctx: UpdateContext) -> Weights:
    gamma = replacement_gamma(p, ctx)
    return _map_floats(delta, lambda _k, v: v * gamma)


def _noise(p: Mapping[str, Any], delta: Weights, ctx: UpdateContext) -> Weights:
    gen = _generator(ctx.seed)
    std = float(p["std"])
    keep = 1.0 if p["mode"] == "add" else 0.0
    # Sorted names so the noise does not depend on dict order.
    noise = {
        k: torch.randn(delta[k].shape, generator=gen) * std
        for k in sorted(delta)
        if delta[k].is_floating_point()
    }
    return _map_floats(delta, lambda k, v: keep * v + noise[k])


def _free_rider(p: Mapping[str, Any], delta: Weights, ctx: UpdateContext) -> Weights:
    return _map_floats(delta, lambda _k, v: torch.zeros_like(v))


DataTransform = Callable[[Mapping[str, Any], torch.Tensor, torch.Tensor, int, int], Any]
UpdateTransform = Callable[[Mapping[str, Any], Weights, UpdateContext], Weights]
DATA_TRANSFORMS: dict[str, DataTransform] = {"label_flip": _label_flip, "backdoor": _backdoor}
UPDATE_TRANSFORMS: dict[str, UpdateTransform] = {
    "model_replacement": _model_replacement,
    "noise": _noise,
    "free_rider": _free_rider,
}


# ---------------------------------------------------------------------------------------------------------
# The plan the agent holds.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BehaviourPlan:
    """A parsed, validated composition of behaviours; empty means honest."""

    behaviours: tuple[Behaviour, ...]

    @property
    def is_honest(self) -> bool:
        return all(b.name == "honest" for b in self.behaviours)

    @property
    def skips_training(self) -> bool:
        """True when local training cannot affect the upload (free rider, replacing noise)."""
        for b in reversed(self.behaviours):
            if b.name == "free_rider" or (b.name == "noise" and b.params["mode"] == "replace"):
                return True
            if b.name in UPDATE_TRANSFORMS:
                return False
        return False

    def reported_samples(self, samples: int) -> int:
        """The sample count the client claims in its result (inflate_samples lies about it)."""
        for b in self.behaviours:
            if b.name == "inflate_samples":
                samples *= int(b.params["factor"])
        return samples

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able form (for logs and the lab's record of who misbehaved)."""
        return [{"name": b.name, **b.params} for b in self.behaviours if b.name != "honest"]

    def transform_data(
        self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The local data the client trains on. Never mutates the inputs."""
        for index, b in enumerate(self.behaviours):
            transform = DATA_TRANSFORMS.get(b.name)
            if transform is not None:
                x, y = transform(b.params, x, y, num_classes, seed + 7919 * index)
        return x, y

    def transform_update(
        self,
        delta: Weights,
        *,
        seed: int = 0,
        clients_per_round: int | None = None,
        server_lr: float = 1.0,
    ) -> Weights:
        """The delta the client uploads. Never mutates the input."""
        for index, b in enumerate(self.behaviours):
            transform = UPDATE_TRANSFORMS.get(b.name)
            if transform is not None:
                ctx = UpdateContext(seed + 7919 * index, clients_per_round, server_lr)
                delta = transform(b.params, delta, ctx)
        return delta


def load_behaviour(spec: str | Mapping[str, Any] | list[Any] | BehaviourPlan | None) -> BehaviourPlan:
    """A spec (or an already-parsed plan) -> the plan; parsing is cached for text specs."""
    if isinstance(spec, BehaviourPlan):
        return spec
    if isinstance(spec, str):
        return _parse_cached(spec)
    return parse_behaviour(spec)


@functools.lru_cache(maxsize=32)
def _parse_cached(spec: str) -> BehaviourPlan:
    return parse_behaviour(spec)


def _num_classes(config: Mapping[str, Any], y: torch.Tensor) -> int:
    model = config.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("num_classes"), int):
        return int(model["num_classes"])
    return int(y.max()) + 1 if len(y) else 1


def apply_behaviour(
    name: str | BehaviourPlan | None,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: Weights | None,
    *,
    phase: str,
    config: Mapping[str, Any],
    global_weights: Mapping[str, torch.Tensor],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, Weights | None]:
    """The hook training/fl/client.py calls around local training (its `_train_misbehaving` contract):
    phase "data" before training (returns possibly poisoned x, y), phase "update" after (returns the
    delta to upload). `name` is the phone's behaviour spec. Round-config keys read: ``model.num_classes``,
    ``clients_per_round`` and ``server_lr`` (model replacement's default γ). `global_weights` is not
    needed: every update-side behaviour is expressible on the delta (γ(X − w_t) + w_t − w_t = γ·Δ)."""
    plan = load_behaviour(name)
    seed = int(rng.integers(0, 2**62))
    if phase == "data":
        x2, y2 = plan.transform_data(x, y, num_classes=_num_classes(config, y), seed=seed)
        return x2, y2, delta
    if phase == "update":
        if delta is None:
            raise BehaviourError("apply_behaviour: the update phase needs the trained delta")
        clients = config.get("clients_per_round")
        server_lr = config.get("server_lr", 1.0)
        updated = plan.transform_update(
            delta,
            seed=seed,
            clients_per_round=int(clients) if isinstance(clients, int) and clients > 0 else None,
            server_lr=float(server_lr) if isinstance(server_lr, int | float) and server_lr > 0 else 1.0,
        )
        return x, y, updated
    raise BehaviourError(f"apply_behaviour: unknown phase {phase!r} (data or update)")
