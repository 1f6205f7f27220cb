"""The data set records every loader returns: `Dataset` (features and labels) and `DatasetSplits` (train
and held-out test). Apart from datasets.py so that loaders in other modules (recsys_dataset.py) can build
them without importing the loader registry that imports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Float32 features `x` of shape (n, *feature_shape) and int64 labels `y` of shape (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    feature_shape: tuple[int, ...]
    groups: np.ndarray | None = None  # per-sample natural client (e.g. Synthetic's device), if any

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if tuple(self.x.shape[1:]) != self.feature_shape:
            raise ValueError(f"x rows have shape {tuple(self.x.shape[1:])}, expected {self.feature_shape}")
        if self.groups is not None and len(self.groups) != len(self):
            raise ValueError("groups must give one group per sample")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def subset(self, indices: np.ndarray) -> Dataset:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        groups = None if self.groups is None else self.groups[np.asarray(indices, dtype=np.int64)]
        return Dataset(self.x[index], self.y[index], self.num_classes, self.feature_shape, groups)


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: Dataset
    test: Dataset
    params: dict[str, Any]
    # Facts about the data a model needs beyond input shape and classes (e.g. the CTR model's embedding
    # table sizes); the engine adds them to the job's model spec.
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.train.feature_shape
