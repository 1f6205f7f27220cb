"""The server's held-out test set when a data file comes without one: deterministic given the seed.

With client ids every client keeps most of its samples and gives `test_fraction · n_k` (rounded, at most
n_k - 1) to the test set, LEAF's own per-user "sample" split; a client of one sample keeps it. Without client ids the split is
stratified by label the same way, so the test set has the training set's label mix.
"""

from __future__ import annotations

import numpy as np


def holdout_indices(strata: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both sorted; every stratum (client, or label) is split apart."""
    rng = np.random.default_rng(seed)
    order = np.argsort(strata, kind="stable")  # one sort, not one scan per client (LEAF has thousands)
    _, starts, counts = np.unique(strata[order], return_index=True, return_counts=True)
    test: list[np.ndarray] = []
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        members = rng.permutation(order[start : start + count])
        test.append(members[: min(count - 1, int(np.floor(test_fraction * count + 0.5)))])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(strata), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx.astype(np.int64)
