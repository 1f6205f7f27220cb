"""What the data set page shows of a data set: sizes, classes, samples per client, label mix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.fl.dataset_types import Dataset, DatasetSplits

HISTOGRAM_BINS = 20
LISTED_CLIENTS = 100  # the label mix of this many clients (the largest), for a stacked bar chart


def summarize(
    splits: DatasetSplits, *, bins: int = HISTOGRAM_BINS, listed_clients: int = LISTED_CLIENTS
) -> dict[str, Any]:
    """A JSON-able summary:

    - samples: train / test counts; feature_shape; num_classes; bytes (features + labels in memory);
    - label_counts: per split, one count per class 0..K-1;
    - clients (None without natural clients): count; sizes (min, median, mean, max); a histogram of
      samples per client (integer bins: `edges[i] <= size < edges[i + 1]`); classes_per_client
      (how many clients hold 1, 2, ..., K distinct classes: the non-IID-ness at a glance); and label_mix,
      the largest `listed_clients` clients' per-class counts.
    """
    train, test = splits.train, splits.test
    k = splits.num_classes
    summary: dict[str, Any] = {
        "name": splits.name,
        "samples": {"train": len(train), "test": len(test)},
        "feature_shape": list(splits.feature_shape),
        "num_features": int(math.prod(splits.feature_shape)),
        "num_classes": k,
        "bytes": _bytes(train) + _bytes(test),
        "label_counts": {"train": _label_counts(train.labels, k), "test": _label_counts(test.labels, k)},
        "clients": None,
    }
    if train.groups is not None and len(train):
        summary["clients"] = _clients(train, k, bins, listed_clients, splits.params.get("client_ids") or [])
    return summary


def _bytes(data: Dataset) -> int:
    return int(data.x.element_size() * data.x.nelement() + data.y.element_size() * data.y.nelement())


def _label_counts(labels: np.ndarray, k: int) -> list[int]:
    return np.bincount(labels, minlength=k)[:k].astype(int).tolist()


def _clients(data: Dataset, k: int, bins: int, listed: int, names: list[str]) -> dict[str, Any]:
    assert data.groups is not None
    codes, inverse = np.unique(data.groups, return_inverse=True)
    sizes = np.bincount(inverse)
    mix = np.zeros((len(codes), k), dtype=np.int64)
    np.add.at(mix, (inverse, data.labels), 1)
    largest = np.argsort(-sizes, kind="stable")[:listed]

    def client_name(index: int) -> str:
        code = int(codes[index])
        return names[code] if 0 <= code < len(names) else str(code)

    return {
        "count": int(len(codes)),
        "sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "mean": float(sizes.mean()),
            "max": int(sizes.max()),
        },
        "histogram": _integer_histogram(sizes, bins),
        "classes_per_client": np.bincount((mix > 0).sum(axis=1), minlength=k + 1)[1:].astype(int).tolist(),
        "label_mix": [
            {
                "client": client_name(int(i)),
                "samples": int(sizes[i]),
                "label_counts": mix[i].astype(int).tolist(),
            }
            for i in largest
        ],
    }


def _integer_histogram(sizes: np.ndarray, bins: int) -> dict[str, list[int]]:
    """Bins of equal integer width covering min..max (a client's size is a whole number of samples)."""
    low, high = int(sizes.min()), int(sizes.max())
    width = max(1, math.ceil((high - low + 1) / max(1, bins)))
    edges = list(range(low, high + width + 1, width))
    counts = np.bincount((sizes - low) // width, minlength=len(edges) - 1)[: len(edges) - 1]
    return {"edges": edges, "counts": counts.astype(int).tolist()}
