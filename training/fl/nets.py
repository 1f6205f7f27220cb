"""The models FedFleet trains: logistic regression, an MLP and a small CNN for 8×8 digits.

Models are described by a JSON-able *model spec* so the server and the on-device agent build the very
same architecture: ``{"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": [200, 200]}``.
`input_shape` and `num_classes` come from the data set (`model_spec_for`), the rest are the model's own
keyword arguments.

None of the models has buffers (no batch norm), so a model's `state_dict` is exactly its parameters and
every entry is a float32 tensor — the convention `strategy.Weights` relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from training.fl.strategy import Weights

ModelFactory = Callable[..., nn.Module]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer on the flattened input."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(x))


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. 64-200-200-10 (McMahan et al.'s 2NN on 8×8 digits)."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)
    ) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"mlp: hidden must be a non-empty list of positive sizes, got {list(hidden)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions, one 2×2 max-pool and two linear layers; sized for 8×8 single-channel images."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"cnn: needs image inputs (channels, height, width), got shape {list(input_shape)}"
            )
        in_channels, height, width = (int(d) for d in input_shape)
        if height < 2 or width < 2:
            raise ValueError(f"cnn: images must be at least 2×2, got {height}×{width}")
        c1, c2 = (int(c) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * (height // 2) * (width // 2), 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


CTR_CONFIG_KEYS = frozenset({"emb_dim", "hidden", "attention_hidden", "pooling", "init_std"})
# The CTR model's embedding tables (parameter prefixes) and the spec keyword that sizes each one.
CTR_TABLE_SIZES = {"emb.item": "num_items", "emb.cat": "num_categories"}


def ctr_model(
    input_shape: Sequence[int], num_classes: int, *, num_items: int, num_categories: int, **config: Any
) -> nn.Module:
    """The embedding click-through-rate model (ctr_model.CTRModel) for packed CTR samples
    (`CTRSamples.to_xy`: input_shape (2L + 2,), two classes: no click / click). It scores the four id
    fields, not a feature tensor, so the engine evaluates it with `evaluate.evaluate_weights`' CTR path."""
    from training.fl.ctr_model import CTRModel, CTRModelConfig  # noqa: PLC0415 - ctr_model is optional here

    unknown = sorted(set(config) - CTR_CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"ctr: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(CTR_CONFIG_KEYS))}"
        )
    if num_classes != 2:
        raise ValueError(f"ctr: predicts click / no click (2 classes), got num_classes={num_classes}")
    if len(input_shape) != 1 or input_shape[0] < 4 or input_shape[0] % 2:
        raise ValueError(f"ctr: needs packed CTR samples of shape (2L + 2,), got {list(input_shape)}")
    if int(num_items) < 0 or int(num_categories) < 0:  # 0 rows: a submodel that requested none
        raise ValueError("ctr: num_items and num_categories must be >= 0")
    return CTRModel(int(num_items), int(num_categories), CTRModelConfig.from_json(config))


def is_ctr_spec(spec: Mapping[str, Any]) -> bool:
    return spec.get("name") == "ctr"


def submodel_spec(spec: Mapping[str, Any], received: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The spec of what a phone actually received: for a CTR submodel download (`<table>.idx` present)
    each table has only its requested rows, so the phone builds a model of that size, never the full
    one (which need not fit on a phone)."""
    out = dict(spec)
    if is_ctr_spec(spec):
        for table, key in CTR_TABLE_SIZES.items():
            ids = received.get(table + ".idx")
            if ids is not None:
                out[key] = int(ids.numel())
    return out


# Other modules add their models here (name -> factory taking input_shape, num_classes and keyword args).
MODEL_REGISTRY: dict[str, ModelFactory] = {
    "logreg": LogisticRegression,
    "mlp": MLP,
    "cnn": DigitsCNN,
    "ctr": ctr_model,  # CTR submodel jobs (recsys data set), ALGORITHMS.md §6
}


def register_model(name: str, factory: ModelFactory) -> None:
    if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not factory:
        raise ValueError(f"model {name!r} is already registered")
    MODEL_REGISTRY[name] = factory


def model_names() -> list[str]:
    return sorted(MODEL_REGISTRY)


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, seed: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model; with `seed`, its initial weights are reproducible (global RNG untouched)."""
    try:
        factory = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}") from None
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty list of positive sizes, got {list(input_shape)}")
    shape = tuple(int(d) for d in input_shape)
    if seed is None:
        return factory(shape, num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(shape, num_classes, **kwargs)


def model_spec_for(
    name: str, *, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> dict[str, Any]:
    """The JSON-able description of a model, as the agent's config.json carries it."""
    spec: dict[str, Any] = {
        "name": name,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": num_classes,
    }
    for key, value in kwargs.items():
        spec[key] = list(value) if isinstance(value, tuple) else value
    return spec


def build_model_from_spec(spec: Mapping[str, Any], *, seed: int | None = None) -> nn.Module:
    """Inverse of `model_spec_for`; raises ValueError with a readable reason for a malformed spec."""
    if not isinstance(spec, Mapping):
        raise ValueError("model spec must be an object")
    missing = [key for key in ("name", "input_shape", "num_classes") if key not in spec]
    if missing:
        raise ValueError(f"model spec is missing {', '.join(missing)}")
    name, input_shape, num_classes = spec["name"], spec["input_shape"], spec["num_classes"]
    if not isinstance(name, str):
        raise ValueError("model spec: name must be a string")
    if not isinstance(input_shape, list | tuple) or not all(isinstance(d, int) for d in input_shape):
        raise ValueError("model spec: input_shape must be a list of integers")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise ValueError("model spec: num_classes must be an integer")
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "input_shape", "num_classes")}
    try:
        return build_model(name, input_shape=input_shape, num_classes=num_classes, seed=seed, **kwargs)
    except TypeError as exc:  # an unexpected keyword for this model
        raise ValueError(f"model spec for {name!r}: {exc}") from None


def get_weights(model: nn.Module) -> Weights:
    """A detached float32 copy of the model's parameters, keyed by state_dict name."""
    return {name: tensor.detach().clone().to(torch.float32) for name, tensor in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Load weights; every parameter must be present with its exact shape (strict)."""
    model.load_state_dict(dict(weights), strict=True)


def initial_weights(spec: Mapping[str, Any], seed: int) -> Weights:
    return get_weights(build_model_from_spec(spec, seed=seed))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
