"""Data sets: scikit-learn's bundled 8×8 digits and FedProx's Synthetic(α, β) (ALGORITHMS.md §2).

`load_dataset(name, seed=..., **params)` returns a `DatasetSplits` (train and held-out test `Dataset`s).
`seed` is the *data* seed: it fixes the generated data and the train/test split, so jobs that should be
compared on the same test set must share it (the job's own seed drives selection and local shuffling).

Features keep their natural shape — digits are (1, 8, 8) images, Synthetic rows are (60,) vectors — and
the models flatten as needed. Synthetic data carries `groups`: each training sample's device, which the
"natural" partitioner uses.

Plug-in packages add data sets through the `fedfleet.datasets` entry point (plugins.py): `DATASET_LOADERS`,
`dataset_names()` and `load_dataset()` see them beside the built-ins (which they can never replace), and
`dataset_declaration()` gives any data set's typed parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.fl import plugins
from training.fl.dataset_types import Dataset, DatasetSplits
from training.fl.plugins import DatasetDeclaration, Param

SYNTHETIC_DEVICES = 30
SYNTHETIC_DIMENSION = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_FRACTION = 0.9


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's 1,797 8×8 digits, pixels scaled from 0..16 to [0, 1], stratified seeded split."""
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: the agent never needs scikit-learn
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    def part(idx: np.ndarray) -> Dataset:
        return Dataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), 10, (1, 8, 8))

    return DatasetSplits("digits", part(train_idx), part(test_idx), {"test_fraction": test_fraction})


@dataclass(frozen=True)
class SyntheticDevice:
    x: np.ndarray  # (n_k, 60) float64 as generated
    y: np.ndarray  # (n_k,) int64


def generate_synthetic(
    alpha: float, beta: float, *, iid: bool = False, seed: int = 0, num_devices: int = SYNTHETIC_DEVICES
) -> list[SyntheticDevice]:
    """FedProx's Synthetic(α, β), exactly as ALGORITHMS.md §2 (second argument of N = std dev).

    Per device k: u_k ~ N(0, α), B_k ~ N(0, β); W_k (60×10), b_k (10) ~ N(u_k, 1); v_k (60) ~ N(B_k, 1);
    x ~ N(v_k, Σ), Σ diagonal with Σ_jj = j^-1.2 (j = 1..60); y = argmax(xᵀW_k + b_k);
    n_k = int(lognormal(mean 4, sigma 2)) + 50. IID variant: one shared W, b ~ N(0, 1) and v = 0.
    The draw order follows the FedProx reference generator (sizes, u, B, v, shared W/b, then per device).
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"synthetic: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if num_devices < 1:
        raise ValueError(f"synthetic: num_devices must be >= 1, got {num_devices}")
    rng = np.random.default_rng(seed)
    d, c = SYNTHETIC_DIMENSION, SYNTHETIC_CLASSES
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    u = rng.normal(0, alpha, num_devices)
    big_b = rng.normal(0, beta, num_devices)
    # Σ is diagonal, so x = v + sqrt(diag Σ) ⊙ z with z ~ N(0, I) is exactly N(v, Σ).
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if iid:
        v = np.zeros((num_devices, d))
    else:
        v = np.stack([rng.normal(big_b[k], 1, d) for k in range(num_devices)])
    shared_w = rng.normal(0, 1, (d, c)) if iid else None
    shared_b = rng.normal(0, 1, c) if iid else None
    devices = []
    for k in range(num_devices):
        if shared_w is not None and shared_b is not None:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(u[k], 1, (d, c))
            b = rng.normal(u[k], 1, c)
        x = v[k] + std_x * rng.standard_normal((int(sizes[k]), d))
        y = np.argmax(x @ w + b, axis=1).astype(np.int64)
        devices.append(SyntheticDevice(x, y))
    return devices


def load_synthetic(
    *,
    seed: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    iid: bool = False,
    num_devices: int = SYNTHETIC_DEVICES,
) -> DatasetSplits:
    """Synthetic(α, β) with each device's first 90% (int(0.9·n_k)) for training and the rest for testing.

    A device's samples are i.i.d. draws, so taking the first 90% is an unbiased split. The server's test set
    is the union of the devices' 10% test parts; `train.groups` keeps each training sample's device.
    """
    devices = generate_synthetic(alpha, beta, iid=iid, seed=seed, num_devices=num_devices)
    xs_train, ys_train, groups, xs_test, ys_test = [], [], [], [], []
    for k, device in enumerate(devices):
        n_train = int(SYNTHETIC_TRAIN_FRACTION * len(device.y))
        xs_train.append(device.x[:n_train])
        ys_train.append(device.y[:n_train])
        groups.append(np.full(n_train, k, dtype=np.int64))
        xs_test.append(device.x[n_train:])
        ys_test.append(device.y[n_train:])
    shape = (SYNTHETIC_DIMENSION,)

    def part(xs: list[np.ndarray], ys: list[np.ndarray], group: np.ndarray | None) -> Dataset:
        x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
        y = torch.from_numpy(np.concatenate(ys))
        return Dataset(x, y, SYNTHETIC_CLASSES, shape, group)

    params = {"alpha": alpha, "beta": beta, "iid": iid, "num_devices": num_devices}
    return DatasetSplits(
        "synthetic", part(xs_train, ys_train, np.concatenate(groups)), part(xs_test, ys_test, None), params
    )


DatasetLoader = Callable[..., DatasetSplits]


# Other modules register their data sets here (name -> loader taking seed= and keyword parameters).
def _load_recsys(
    *,
    seed: int = 0,
    num_items: int = 100_000,
    num_categories: int = 200,
    num_clients: int = 20,
    users_per_client: int = 1,
    samples_per_user: int = 300,
    test_samples_per_user: int = 100,
) -> DatasetSplits:
    """Generated click logs for CTR submodel jobs (recsys_dataset.py). The keyword parameters are spelled
    out because the job form reads them from this signature; imported lazily because recsys_dataset
    imports this module."""
    from training.fl.recsys_dataset import load_recsys  # noqa: PLC0415

    return load_recsys(
        seed=seed,
        num_items=num_items,
        num_categories=num_categories,
        num_clients=num_clients,
        users_per_client=users_per_client,
        samples_per_user=samples_per_user,
        test_samples_per_user=test_samples_per_user,
    )


BUILTIN_DATASET_LOADERS: dict[str, DatasetLoader] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "recsys": _load_recsys,  # CTR click logs for submodel jobs (FedSubAvg), ALGORITHMS.md §6
}
PARAM_TYPE_OF_DEFAULT = {bool: "bool", int: "int", float: "float", str: "str"}


def plugin_datasets() -> plugins.Discovered[DatasetDeclaration]:
    """The installed `fedfleet.datasets` plug-ins (read once per process), and why any were left out."""
    return plugins.installed(plugins.DATASETS_GROUP, frozenset(BUILTIN_DATASET_LOADERS))


class LoaderRegistry(MutableMapping[str, DatasetLoader]):
    """name -> loader(seed=..., **params): the built-in loaders (the mutable part: other modules register
    theirs here) followed by the installed plug-ins. A plug-in's loader validates its parameters against
    the declaration and carries a signature listing them (keyword-only, with their defaults), so code
    that reads parameters from a loader's signature sees a plug-in's like a built-in's."""

    def __init__(self, builtins: dict[str, DatasetLoader]) -> None:
        self._builtins = builtins

    def __getitem__(self, name: str) -> DatasetLoader:
        if name in self._builtins:
            return self._builtins[name]
        declaration = plugin_datasets().declarations.get(name)
        if declaration is None:
            raise KeyError(name)
        return _plugin_loader(declaration)

    def __iter__(self) -> Iterator[str]:
        yield from self._builtins
        yield from sorted(set(plugin_datasets().declarations) - set(self._builtins))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __setitem__(self, name: str, loader: DatasetLoader) -> None:
        self._builtins[name] = loader

    def __delitem__(self, name: str) -> None:
        del self._builtins[name]


def _plugin_loader(declaration: DatasetDeclaration) -> DatasetLoader:
    what = f"data set plug-in {declaration.name!r}"

    def load(*, seed: int = 0, **params: Any) -> DatasetSplits:
        values = declaration.validate(params)
        splits = plugins.call_plugin(what, declaration.origin, declaration.load, seed=seed, **values)
        if not isinstance(splits, DatasetSplits):
            raise plugins.PluginError(
                f"{what} ({declaration.origin}) returned {type(splits).__name__}, not DatasetSplits"
            )
        return splits

    keyword = inspect.Parameter.KEYWORD_ONLY
    load.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("seed", keyword, default=0, annotation=int)]
        + [inspect.Parameter(p.name, keyword, default=p.json_default()) for p in declaration.params],
        return_annotation=DatasetSplits,
    )
    load.__doc__ = declaration.help or declaration.label
    return load


DATASET_LOADERS: LoaderRegistry = LoaderRegistry(BUILTIN_DATASET_LOADERS)


def dataset_names() -> list[str]:
    """Built-in data sets, then installed plug-ins."""
    return sorted(BUILTIN_DATASET_LOADERS) + sorted(
        set(plugin_datasets().declarations) - set(BUILTIN_DATASET_LOADERS)
    )


def dataset_declaration(name: str) -> DatasetDeclaration:
    """A data set's loader and typed parameters. A built-in's are read from its loader's keyword-only
    parameters and their defaults (the type is the default's), so they cannot drift from the code."""
    loader = BUILTIN_DATASET_LOADERS.get(name)
    if loader is None:
        found = plugin_datasets()
        declaration = found.declarations.get(name)
        if declaration is None:
            raise found.unknown("data set", name, dataset_names())
        return declaration
    params = [
        Param(p.name, PARAM_TYPE_OF_DEFAULT[type(p.default)], p.default)
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.name != "seed"
        and type(p.default) in PARAM_TYPE_OF_DEFAULT
    ]
    return DatasetDeclaration(name, loader, tuple(params), label=name, help=inspect.getdoc(loader) or "")


def validate_dataset_params(
    name: str, given: Mapping[str, Any], *, from_text: bool = False
) -> dict[str, Any]:
    """A job's data set parameters against the data set's declaration, defaults filled in (all problems
    in one ParamError); what the form, the API and run_job call before a job exists."""
    return dataset_declaration(name).validate(given, from_text=from_text)


def load_dataset(name: str, *, seed: int = 0, **params: Any) -> DatasetSplits:
    try:
        loader = DATASET_LOADERS[name]
    except KeyError:
        raise plugin_datasets().unknown("data set", name, dataset_names()) from None
    try:
        return loader(seed=seed, **params)
    except TypeError as exc:  # an unexpected parameter for this data set
        raise ValueError(f"data set {name!r}: {exc}") from None
