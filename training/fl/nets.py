"""The models FedFleet trains: logistic regression, an MLP and a small CNN for 8×8 digits.

Models are described by a JSON-able *model spec* so the server and the on-device agent build the very
same architecture: ``{"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": [200, 200]}``.
`input_shape` and `num_classes` come from the data set (`model_spec_for`), the rest are the model's own
keyword arguments.

None of the models has buffers (no batch norm), so a model's `state_dict` is exactly its parameters and
every entry is a float32 tensor — the convention `strategy.Weights` relies on.

Every model declares its job parameters (`MODEL_PARAMS`: name, type, default, bounds, help), and plug-in
packages add models through the `fedfleet.models` entry point (plugins.py). `model_names()`,
`model_declaration()` and `build_model()` see built-ins and installed plug-ins alike; a plug-in can never
replace a built-in. `validate_model_params` is the check the job form, the API and `run_job` share, and
`spec_parameter_count` tells a model's size before a job launches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from training.fl import plugins
from training.fl.plugins import ModelDeclaration, Param
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
    """3×3 convolutions (one per entry of `channels`, ReLU after each), one 2×2 max-pool and two linear
    layers (`fc_width` hidden units). The defaults — channels (16, 32), fc_width 64 — are the CNN every
    job trained before the sizes became parameters, with the same parameter names."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        fc_width: int = 64,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"cnn: needs image inputs (channels, height, width), got shape {list(input_shape)}"
            )
        in_channels, height, width = (int(d) for d in input_shape)
        if height < 2 or width < 2:
            raise ValueError(f"cnn: images must be at least 2×2, got {height}×{width}")
        sizes = [int(c) for c in channels]
        if not sizes or any(c < 1 for c in sizes) or int(fc_width) < 1:
            raise ValueError(
                f"cnn: channels must be a non-empty list of positive sizes and fc_width positive, "
                f"got {list(channels)} and {fc_width}"
            )
        layers: list[nn.Module] = []
        for size in sizes:
            layers += [nn.Conv2d(in_channels, size, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = size
        self.features = nn.Sequential(*layers, nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * (height // 2) * (width // 2), int(fc_width)),
            nn.ReLU(),
            nn.Linear(int(fc_width), num_classes),
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

# The job parameters of each built-in model; the defaults are the sizes every job had before they were
# parameters, so a job that sets none trains exactly what it trained before.
MODEL_PARAMS: dict[str, tuple[Param, ...]] = {
    "logreg": (),
    "mlp": (
        Param("hidden", "ints", (200, 200), min=1, max=4096, max_items=8, help="widths of the hidden layers"),
    ),
    "cnn": (
        Param(
            "channels", "ints", (16, 32), min=1, max=256, max_items=4, help="channels of each 3×3 convolution"
        ),
        Param("fc_width", "int", 64, min=1, max=4096, help="width of the hidden linear layer"),
    ),
    "ctr": (
        Param("emb_dim", "int", 16, min=1, max=256, help="embedding size of items and categories"),
        Param("hidden", "ints", (64, 32), min=1, max=4096, max_items=8, help="widths of the scoring MLP"),
        Param("attention_hidden", "int", 16, min=1, max=1024, help="width of the attention MLP"),
        Param("pooling", "str", "attention", choices=("attention", "mean"), help="how the history is pooled"),
        Param("init_std", "float", 0.05, min=1e-6, max=1.0, help="std dev of the initial embeddings"),
    ),
}
MODEL_LABELS = {
    "logreg": "Logistic regression",
    "mlp": "MLP",
    "cnn": "Small CNN",
    "ctr": "CTR (embeddings + MLP)",
}
# Keywords a model takes from its data set (DatasetSplits.model_kwargs), not from the job.
MODEL_DATA_KWARGS: dict[str, frozenset[str]] = {"ctr": frozenset(CTR_TABLE_SIZES.values())}


def register_model(name: str, factory: ModelFactory, params: Sequence[Param] = ()) -> None:
    if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not factory:
        raise ValueError(f"model {name!r} is already registered")
    MODEL_REGISTRY[name] = factory
    if params or name not in MODEL_PARAMS:
        MODEL_PARAMS[name] = tuple(params)


def plugin_models() -> plugins.Discovered[ModelDeclaration]:
    """The installed `fedfleet.models` plug-ins (read once per process), and why any were left out."""
    return plugins.installed(plugins.MODELS_GROUP, frozenset(MODEL_REGISTRY))


def model_names() -> list[str]:
    """Built-in models, then installed plug-ins."""
    return sorted(MODEL_REGISTRY) + sorted(set(plugin_models().declarations) - set(MODEL_REGISTRY))


def model_declaration(name: str) -> ModelDeclaration:
    """A model's builder, parameters, label and origin (built-in or the plug-in's distribution)."""
    if name in MODEL_REGISTRY:
        return ModelDeclaration(
            name,
            MODEL_REGISTRY[name],
            MODEL_PARAMS.get(name, ()),
            label=MODEL_LABELS.get(name, name),
            data_kwargs=MODEL_DATA_KWARGS.get(name, frozenset()),
        )
    found = plugin_models()
    declaration = found.declarations.get(name)
    if declaration is None:
        raise found.unknown("model", name, model_names())
    return declaration


def validate_model_params(name: str, given: Mapping[str, Any], *, from_text: bool = False) -> dict[str, Any]:
    """A job's model parameters, checked against the model's declaration, defaults filled in (all
    problems in one ParamError). This is what the form, the API and run_job call before a job exists."""
    return model_declaration(name).validate(given, from_text=from_text)


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, seed: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model; with `seed`, its initial weights are reproducible (global RNG untouched).

    A plug-in model's parameters are validated against its declaration first, and a failure of its code
    becomes a PluginError naming it; built-in factories check their own arguments."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty list of positive sizes, got {list(input_shape)}")
    shape = tuple(int(d) for d in input_shape)
    factory = MODEL_REGISTRY.get(name)
    if factory is None:
        factory = _plugin_factory(model_declaration(name), kwargs)
        kwargs = {}
    if seed is None:
        return factory(shape, num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(shape, num_classes, **kwargs)


def _plugin_factory(declaration: ModelDeclaration, kwargs: Mapping[str, Any]) -> ModelFactory:
    """A factory that builds the plug-in's model with `kwargs` validated, and checks what it returns."""
    data = {k: v for k, v in kwargs.items() if k in declaration.data_kwargs}
    params = declaration.validate({k: v for k, v in kwargs.items() if k not in declaration.data_kwargs})
    what = f"model plug-in {declaration.name!r}"

    def factory(shape: tuple[int, ...], num_classes: int) -> nn.Module:
        model = plugins.call_plugin(
            what, declaration.origin, declaration.build, shape, num_classes, **data, **params
        )
        if not isinstance(model, nn.Module):
            raise plugins.PluginError(
                f"{what} ({declaration.origin}) returned {type(model).__name__}, not a torch module"
            )
        return model

    return factory


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


def spec_parameter_count(spec: Mapping[str, Any]) -> int:
    """How many parameters the model of `spec` has, without allocating its weights: the model is built on
    PyTorch's meta device (shapes only), so a 100M-parameter spec is sized before anyone launches it.
    A plug-in whose constructor cannot run on the meta device is built for real instead."""
    try:
        with torch.device("meta"):
            return count_parameters(build_model_from_spec(spec))
    except (NotImplementedError, RuntimeError):  # an operation without a meta kernel, in a plug-in
        return count_parameters(build_model_from_spec(spec))
