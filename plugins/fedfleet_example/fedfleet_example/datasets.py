"""Gaussian blobs split over natural clients, declared with FedFleet's own types (this module runs on the
server only, where FedFleet is importable)."""

from __future__ import annotations

import numpy as np
import torch

from training.fl.dataset_types import Dataset, DatasetSplits
from training.fl.plugins import DatasetDeclaration, Param


def load_blobs(
    *,
    seed: int,
    num_clients: int,
    samples_per_client: int,
    num_classes: int,
    dimension: int,
    separation: float,
    alpha: float,
    test_fraction: float,
) -> DatasetSplits:
    """`num_clients` clients, each drawing its labels from its own Dirichlet(α) class mix (small α: few
    classes per client) and each sample from N(class mean, I), class means ~ N(0, separation²).
    Each client's last `test_fraction` of samples goes to the server's test set; `train.groups` is the
    client, so partition "natural" gives one phone per client."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, separation, (num_classes, dimension))
    n_test = max(1, int(round(test_fraction * samples_per_client)))
    if n_test >= samples_per_client:
        raise ValueError("blobs: test_fraction leaves a client no training samples")
    train_x, train_y, groups, test_x, test_y = [], [], [], [], []
    for client in range(num_clients):
        mix = rng.dirichlet(np.full(num_classes, alpha))
        labels = rng.choice(num_classes, size=samples_per_client, p=mix)
        x = means[labels] + rng.standard_normal((samples_per_client, dimension))
        cut = samples_per_client - n_test
        train_x.append(x[:cut])
        train_y.append(labels[:cut])
        groups.append(np.full(cut, client, dtype=np.int64))
        test_x.append(x[cut:])
        test_y.append(labels[cut:])

    def part(xs: list[np.ndarray], ys: list[np.ndarray], group: np.ndarray | None) -> Dataset:
        x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
        y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
        return Dataset(x, y, num_classes, (dimension,), group)

    params = {
        "num_clients": num_clients,
        "samples_per_client": samples_per_client,
        "num_classes": num_classes,
        "dimension": dimension,
        "separation": separation,
        "alpha": alpha,
        "test_fraction": test_fraction,
    }
    return DatasetSplits(
        "blobs", part(train_x, train_y, np.concatenate(groups)), part(test_x, test_y, None), params
    )


BLOBS = DatasetDeclaration(
    name="blobs",
    load=load_blobs,
    label="Gaussian blobs (example plug-in)",
    help="Gaussian class clusters; each client has its own Dirichlet class mix.",
    params=(
        Param("num_clients", "int", 10, min=1, max=1000, help="natural clients (phones)"),
        Param("samples_per_client", "int", 100, min=2, max=100_000, help="samples per client"),
        Param("num_classes", "int", 4, min=2, max=100, help="classes"),
        Param("dimension", "int", 16, min=1, max=4096, help="features per sample"),
        Param("separation", "float", 3.0, min=0.0, max=100.0, help="spread of the class means"),
        Param("alpha", "float", 1.0, min=0.01, max=1000.0, help="Dirichlet α of each client's class mix"),
        Param("test_fraction", "float", 0.2, min=0.01, max=0.9, help="each client's share for the test set"),
    ),
)
