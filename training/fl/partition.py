"""Partitioners: split a training set's sample indices among clients.

Every partitioner returns ``list[np.ndarray]`` — one sorted int64 index array per client — and together the
arrays cover every sample exactly once: no scheme drops or duplicates data. All are deterministic given
`seed` (numpy Generator).

No client is ever empty. The rule: a scheme first asks for at least one sample per client
(`num_samples >= num_clients`, else ValueError); where the random draw can still leave a client with
nothing (Dirichlet), the empty client takes one random sample from the currently largest client, which
changes the label mix by a single sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from training.fl.datasets import Dataset

Partition = list[np.ndarray]


def _check_counts(num_samples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"need at least one client, got {num_clients}")
    if num_samples < num_clients:
        raise ValueError(
            f"cannot give {num_clients} clients at least one sample each from {num_samples} samples"
        )


def _finish(parts: list[np.ndarray]) -> Partition:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(num_samples: int, num_clients: int, *, seed: int) -> Partition:
    """Shuffle, then deal out near-equal slices (sizes differ by at most one)."""
    _check_counts(num_samples, num_clients)
    order = np.random.default_rng(seed).permutation(num_samples)
    return _finish(np.array_split(order, num_clients))


def dirichlet(labels: np.ndarray, num_clients: int, *, alpha: float, seed: int) -> Partition:
    """Label skew: for each class, the share each client gets is drawn from Dirichlet(α·1).

    Small α (0.1) gives clients a few dominant classes; large α (100) approaches IID.
    """
    labels = np.asarray(labels)
    _check_counts(len(labels), num_clients)
    if not alpha > 0:
        raise ValueError(f"dirichlet: alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    _fill_empty_clients(parts, rng)
    return _finish([np.asarray(p, dtype=np.int64) for p in parts])


def _fill_empty_clients(parts: list[list[int]], rng: np.random.Generator) -> None:
    """The never-empty rule: an empty client takes one random sample from the largest client."""
    for client, part in enumerate(parts):
        if part:
            continue
        donor = max(range(len(parts)), key=lambda k: (len(parts[k]), -k))
        taken = parts[donor].pop(int(rng.integers(len(parts[donor]))))
        parts[client].append(taken)


def shards(labels: np.ndarray, num_clients: int, *, shards_per_client: int, seed: int) -> Partition:
    """McMahan et al.'s pathological non-IID split: sort by label, cut into num_clients·k equal shards,
    give each client k random shards (so each client sees about k classes)."""
    labels = np.asarray(labels)
    if shards_per_client < 1:
        raise ValueError(f"shards: shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    _check_counts(len(labels), num_clients)
    if len(labels) < num_shards:
        raise ValueError(f"shards: {len(labels)} samples cannot make {num_shards} non-empty shards")
    rng = np.random.default_rng(seed)
    # Shuffle first so ties within a class are broken randomly, then a stable sort groups the labels.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    owner_order = rng.permutation(num_shards)
    return _finish(
        [
            np.concatenate(
                [pieces[s] for s in owner_order[c * shards_per_client : (c + 1) * shards_per_client]]
            )
            for c in range(num_clients)
        ]
    )


def quantity_skew(num_samples: int, num_clients: int, *, sigma: float = 1.0, seed: int) -> Partition:
    """IID labels but unequal sizes: shares ~ lognormal(0, σ); each client gets 1 sample plus its share of
    the remaining samples (largest-remainder rounding, so the sizes add up exactly)."""
    _check_counts(num_samples, num_clients)
    if sigma < 0:
        raise ValueError(f"quantity: sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, sigma, num_clients)
    spare = num_samples - num_clients
    exact = weights / weights.sum() * spare
    sizes = np.floor(exact).astype(np.int64)
    shortfall = spare - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:shortfall]] += 1
    sizes += 1
    order = rng.permutation(num_samples)
    return _finish(np.split(order, np.cumsum(sizes)[:-1]))


def natural(groups: np.ndarray) -> Partition:
    """One client per natural group (Synthetic's devices, a LEAF file's users), in group-id order."""
    groups = np.asarray(groups)
    if len(groups) == 0:
        raise ValueError("natural: the data set has no samples")
    # One stable sort instead of one scan per group: a LEAF file has thousands of users.
    order = np.argsort(groups, kind="stable")
    _, starts = np.unique(groups[order], return_index=True)
    return _finish(np.split(order, starts[1:]))


PartitionFunction = Callable[..., Partition]


def _by_scheme_iid(data: Dataset, num_clients: int, seed: int) -> Partition:
    return iid(len(data), num_clients, seed=seed)


def _by_scheme_dirichlet(data: Dataset, num_clients: int, seed: int, alpha: float = 0.5) -> Partition:
    return dirichlet(data.labels, num_clients, alpha=alpha, seed=seed)


def _by_scheme_shards(data: Dataset, num_clients: int, seed: int, shards_per_client: int = 2) -> Partition:
    return shards(data.labels, num_clients, shards_per_client=shards_per_client, seed=seed)


def _by_scheme_quantity(data: Dataset, num_clients: int, seed: int, sigma: float = 1.0) -> Partition:
    return quantity_skew(len(data), num_clients, sigma=sigma, seed=seed)


def _by_scheme_natural(data: Dataset, num_clients: int, seed: int) -> Partition:
    if data.groups is None:
        raise ValueError(
            "natural: this data set has no natural clients (synthetic, recsys and files with client ids have)"
        )
    parts = natural(data.groups)
    if num_clients > len(parts):
        raise ValueError(f"natural: the data set has {len(parts)} natural clients, fewer than {num_clients}")
    if num_clients < len(parts):  # more users than phones: each phone holds whole users (i -> i mod N)
        merged = [np.concatenate(parts[index::num_clients]) for index in range(num_clients)]
        return _finish([np.sort(part) for part in merged])
    return parts


# scheme name -> function(data, num_clients, seed, **scheme parameters)
PARTITIONERS: dict[str, PartitionFunction] = {
    "iid": _by_scheme_iid,
    "dirichlet": _by_scheme_dirichlet,
    "shards": _by_scheme_shards,
    "quantity": _by_scheme_quantity,
    "natural": _by_scheme_natural,
}


def partition_names() -> list[str]:
    return sorted(PARTITIONERS)


def partition_dataset(scheme: str, data: Dataset, num_clients: int, *, seed: int, **params: Any) -> Partition:
    """Dispatch by scheme name; unknown schemes or parameters raise ValueError with the reason."""
    try:
        function = PARTITIONERS[scheme]
    except KeyError:
        raise ValueError(f"unknown partition {scheme!r}; known: {', '.join(partition_names())}") from None
    try:
        return function(data, num_clients, seed, **params)
    except TypeError as exc:
        raise ValueError(f"partition {scheme!r}: {exc}") from None
