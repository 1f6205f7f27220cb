"""FedAvg's aggregation rule, the default `strategy.Aggregator`, and the lookup by name.

Robust rules (clipping, median, trimmed mean, Krum) live in training/fl/robust.py; `make_aggregator`
resolves every name other than "mean" there, so a strategy only ever asks this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from training.fl.strategy import Aggregator, Weights

DEFAULT_AGGREGATOR = "mean"


def weighted_mean(deltas: Sequence[Weights], sample_counts: Sequence[int]) -> Weights:
    """Σ_k (n_k / Σ_j n_j) · Δ_k per tensor, accumulated in float64 and returned in each tensor's dtype."""
    if not deltas:
        raise ValueError("cannot aggregate zero updates")
    if len(deltas) != len(sample_counts):
        raise ValueError(f"{len(deltas)} deltas but {len(sample_counts)} sample counts")
    if any(n < 0 for n in sample_counts) or sum(sample_counts) <= 0:
        raise ValueError(f"sample counts must be >= 0 with a positive total, got {list(sample_counts)}")
    names = list(deltas[0])
    for delta in deltas[1:]:
        if set(delta) != set(names):
            raise ValueError("all deltas must have the same tensor names")
    total = float(sum(sample_counts))
    out: Weights = {}
    for name in names:
        acc = torch.zeros_like(deltas[0][name], dtype=torch.float64)
        for delta, n in zip(deltas, sample_counts, strict=True):
            acc += delta[name].to(torch.float64) * (n / total)
        out[name] = acc.to(deltas[0][name].dtype)
    return out


def make_aggregator(name: str = DEFAULT_AGGREGATOR, params: Mapping[str, Any] | None = None) -> Aggregator:
    """ "mean" is FedAvg's weighted mean; any other name is looked up in the robust-rule registry."""
    if name == DEFAULT_AGGREGATOR:
        if params:
            raise ValueError(f"aggregator 'mean' takes no parameters, got {', '.join(sorted(params))}")
        return weighted_mean
    from training.fl import robust  # lazy: the agent never aggregates

    return robust.make_aggregator(name, params)


def aggregator_names() -> list[str]:
    try:
        from training.fl import robust
    except ImportError:  # pragma: no cover - robust.py is part of the platform; this only guards the agent
        return [DEFAULT_AGGREGATOR]
    return [DEFAULT_AGGREGATOR, *(n for n in robust.AGGREGATOR_NAMES if n != DEFAULT_AGGREGATOR)]
