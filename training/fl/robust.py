"""Robust aggregation rules (ALGORITHMS.md §7), each an `strategy.Aggregator`.

An aggregator turns the round's client deltas into the one delta the server applies. Plain FedAvg uses the
sample-weighted mean, which a single scaled update can drag anywhere. The rules here bound that:

- ``clip``:         each delta scaled by min(1, M/‖Δ‖) (global L2 norm over all tensors), then weighted mean.
- ``median``:       coordinate-wise median (the mean of the two middle values when the count is even).
- ``trimmed_mean``: per coordinate, drop the ⌊β·n⌋ largest and ⌊β·n⌋ smallest values, average the rest.
- ``krum``:         the single delta whose summed squared distance to its n − f − 2 nearest others is least.
- ``multi_krum``:   the sample-weighted mean of the m deltas with the best Krum scores.

Median, trimmed mean and Krum ignore sample counts when they choose (weighting would let one client claim a
huge n and win); that is the usual definition, and it is why they cost some accuracy on non-IID data.

Every rule works on the *flattened* deltas: float tensors are concatenated in sorted-key order into one
vector per client, combined, and split back. Non-float tensors (e.g. BatchNorm's ``num_batches_tracked``)
are not averaged by anyone; the first client's value is passed through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from training.fl.strategy import Aggregator, Weights

# ---------------------------------------------------------------------------------------------------------
# Flattening: every rule is a function of an (n_clients, n_coordinates) matrix.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How a `Weights` dict maps onto one flat vector (float tensors only, sorted by name)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @staticmethod
    def of(weights: Weights) -> _Layout:
        names = tuple(sorted(k for k, v in weights.items() if v.is_floating_point()))
        return _Layout(
            names=names,
            shapes=tuple(weights[k].shape for k in names),
            dtypes=tuple(weights[k].dtype for k in names),
        )

    def flatten(self, weights: Weights) -> torch.Tensor:
        if not self.names:
            return torch.zeros(0)
        return torch.cat([weights[k].detach().reshape(-1).to(torch.float64) for k in self.names])

    def unflatten(self, vector: torch.Tensor, template: Weights) -> Weights:
        out: Weights = {}
        offset = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            out[name] = vector[offset : offset + size].reshape(shape).to(dtype)
            offset += size
        for name, tensor in template.items():
            if name not in out:
                out[name] = tensor.detach().clone()
        return out


def stack_deltas(deltas: Sequence[Weights]) -> tuple[torch.Tensor, _Layout]:
    """(n_clients, n_coordinates) float64 matrix of the deltas, and the layout to undo it."""
    if not deltas:
        raise ValueError("cannot aggregate zero updates")
    layout = _Layout.of(deltas[0])
    for delta in deltas[1:]:
        if _Layout.of(delta) != layout:
            raise ValueError("all deltas must have the same names, shapes and dtypes")
    return torch.stack([layout.flatten(d) for d in deltas]), layout


def _normalised_weights(sample_counts: Sequence[int], n_clients: int) -> torch.Tensor:
    if len(sample_counts) != n_clients:
        raise ValueError(f"{n_clients} deltas but {len(sample_counts)} sample counts")
    counts = torch.tensor([float(c) for c in sample_counts], dtype=torch.float64)
    if bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError("sample counts must be non-negative with a positive sum")
    return counts / counts.sum()


# ---------------------------------------------------------------------------------------------------------
# The rules on matrices (pure, easy to test by hand).
# ---------------------------------------------------------------------------------------------------------


def weighted_mean_rows(matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
    return _normalised_weights(sample_counts, matrix.shape[0]) @ matrix


def clip_rows(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row by min(1, M/‖row‖)."""
    norms = matrix.norm(dim=1, keepdim=True)
    return matrix * torch.clamp(max_norm / norms.clamp_min(1e-30), max=1.0)


def median_rows(matrix: torch.Tensor) -> torch.Tensor:
    # torch.median returns the *lower* middle value for an even count; the textbook median averages both.
    ordered, _ = matrix.sort(dim=0)
    n = ordered.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def trimmed_mean_rows(matrix: torch.Tensor, beta: float) -> torch.Tensor:
    n = matrix.shape[0]
    cut = trim_count(n, beta)
    ordered, _ = matrix.sort(dim=0)
    return ordered[cut : n - cut].mean(dim=0)


def trim_count(n_clients: int, beta: float) -> int:
    """How many values are dropped at *each* end: ⌊β·n⌋, capped so at least one value remains."""
    if not 0 <= beta < 0.5:
        raise ValueError("trimmed mean needs 0 <= beta < 0.5")
    return min(int(math.floor(beta * n_clients + 1e-9)), (n_clients - 1) // 2)


def krum_scores(matrix: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Krum score per row: sum of squared distances to its n − f − 2 nearest other rows.

    With too few clients for the guarantee (n < f + 3) the neighbour count is clamped to ≥ 1 so the rule
    still returns something sensible rather than failing a round.
    """
    n = matrix.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=matrix.dtype)
    neighbours = max(1, min(n - num_byzantine - 2, n - 1))
    distances = torch.cdist(matrix, matrix).pow(2)
    distances.fill_diagonal_(float("inf"))  # a row is not its own neighbour
    nearest, _ = distances.topk(neighbours, dim=1, largest=False)
    return nearest.sum(dim=1)


def krum_select(matrix: torch.Tensor, num_byzantine: int, num_selected: int = 1) -> list[int]:
    """Indices of the `num_selected` rows with the lowest Krum scores (ties broken by index)."""
    scores = krum_scores(matrix, num_byzantine)
    order = sorted(range(matrix.shape[0]), key=lambda i: (float(scores[i]), i))
    return order[: max(1, min(num_selected, matrix.shape[0]))]


# ---------------------------------------------------------------------------------------------------------
# Aggregator objects (strategy.Aggregator protocol).
# ---------------------------------------------------------------------------------------------------------


class _MatrixAggregator:
    """Adapter: flatten, apply a matrix rule, unflatten. Subclasses implement `combine`."""

    name = "abstract"

    def __call__(self, deltas: Sequence[Weights], sample_counts: Sequence[int]) -> Weights:
        matrix, layout = stack_deltas(deltas)
        _normalised_weights(sample_counts, matrix.shape[0])  # validate even for rules that ignore counts
        return layout.unflatten(self.combine(matrix, sample_counts), deltas[0])

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class WeightedMean(_MatrixAggregator):
    """FedAvg's rule, for completeness of the registry (the FL core has its own `weighted_mean`)."""

    name = "mean"

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        return weighted_mean_rows(matrix, sample_counts)


class NormClipping(_MatrixAggregator):
    name = "clip"

    def __init__(self, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError("clip: max_norm must be > 0")
        self.max_norm = float(max_norm)

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        return weighted_mean_rows(clip_rows(matrix, self.max_norm), sample_counts)


class CoordinateMedian(_MatrixAggregator):
    name = "median"

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        return median_rows(matrix)


class TrimmedMean(_MatrixAggregator):
    name = "trimmed_mean"

    def __init__(self, beta: float = 0.1) -> None:
        trim_count(10, beta)  # validates the range
        self.beta = float(beta)

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        return trimmed_mean_rows(matrix, self.beta)


class Krum(_MatrixAggregator):
    """Krum (m = 1) and Multi-Krum (m > 1). `last_selected` keeps the chosen indices of the last call so
    the engine can record whose update was used."""

    name = "krum"

    def __init__(self, num_byzantine: int = 1, num_selected: int = 1) -> None:
        if num_byzantine < 0 or num_selected < 1:
            raise ValueError("krum: num_byzantine must be >= 0 and num_selected >= 1")
        self.num_byzantine = int(num_byzantine)
        self.num_selected = int(num_selected)
        self._last_selected: list[int] = []

    @property
    def last_selected(self) -> list[int]:
        return list(self._last_selected)

    def combine(self, matrix: torch.Tensor, sample_counts: Sequence[int]) -> torch.Tensor:
        chosen = krum_select(matrix, self.num_byzantine, self.num_selected)
        self._last_selected = chosen
        return weighted_mean_rows(matrix[chosen], [sample_counts[i] for i in chosen])


class MultiKrum(Krum):
    name = "multi_krum"

    def __init__(self, num_byzantine: int = 1, num_selected: int = 2) -> None:
        super().__init__(num_byzantine=num_byzantine, num_selected=num_selected)


# ---------------------------------------------------------------------------------------------------------
# Registry for the job form.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregatorSpec:
    name: str
    label: str
    params: Mapping[str, Any]  # parameter name -> default (the form's initial values)
    factory: Callable[..., Aggregator]


AGGREGATORS: dict[str, AggregatorSpec] = {
    spec.name: spec
    for spec in (
        AggregatorSpec("mean", "Weighted mean (FedAvg)", {}, WeightedMean),
        AggregatorSpec("clip", "Norm clipping + mean", {"max_norm": 1.0}, NormClipping),
        AggregatorSpec("median", "Coordinate-wise median", {}, CoordinateMedian),
        AggregatorSpec("trimmed_mean", "Trimmed mean", {"beta": 0.1}, TrimmedMean),
        AggregatorSpec("krum", "Krum", {"num_byzantine": 1}, Krum),
        AggregatorSpec("multi_krum", "Multi-Krum", {"num_byzantine": 1, "num_selected": 2}, MultiKrum),
    )
}
AGGREGATOR_NAMES: tuple[str, ...] = tuple(AGGREGATORS)


def make_aggregator(name: str, params: Mapping[str, Any] | None = None) -> Aggregator:
    """Build an aggregator by registry name; unknown names or parameters raise ValueError."""
    spec = AGGREGATORS.get(name)
    if spec is None:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATOR_NAMES)}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"aggregator {name!r} does not take {', '.join(unknown)}")
    return spec.factory(**{**spec.params, **params})
