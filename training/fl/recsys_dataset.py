"""The "recsys" data set of the job form: generated click logs (recsys_data.py) as engine `DatasetSplits`.

The engine moves data as `x`/`y` tensors (shards, test set). A CTR sample is packed by
`CTRSamples.to_xy`: x = int64 [n, 2L + 2] (history | history categories | candidate | category), y = the
int64 click label (0/1, so `num_classes` is 2). `train.groups` names each sample's client (one user per
client by default), which the "natural" partition uses: one client's logs per phone, so a phone touches
only a few hundred of the many items — what makes submodels small.

`model_kwargs` carries the embedding-table sizes the "ctr" model needs (`num_items`, `num_categories`);
the engine adds them to the model spec. Server-side only (numpy): phones receive the packed tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from training.fl.ctr_model import CTRSamples
from training.fl.dataset_types import Dataset, DatasetSplits
from training.fl.recsys_data import RecsysConfig, generate_recsys

RECSYS_NAME = "recsys"
CLICK_CLASSES = 2  # no click / click


def _packed(samples: CTRSamples, groups: np.ndarray | None) -> Dataset:
    x, y = samples.to_xy()
    return Dataset(x, y, CLICK_CLASSES, (int(x.shape[1]),), groups)


def load_recsys(
    *,
    seed: int = 0,
    num_items: int = 100_000,
    num_categories: int = 200,
    num_clients: int = 20,
    users_per_client: int = 1,
    samples_per_user: int = 300,
    test_samples_per_user: int = 100,
    history_len: int = 20,
) -> DatasetSplits:
    """`num_clients` clients' click logs (partition "natural" gives one client per phone, so run it with
    as many phones) and the server's held-out test set (later logs of the same users)."""
    cfg = RecsysConfig(
        num_items=int(num_items),
        num_categories=int(num_categories),
        num_clients=int(num_clients),
        users_per_client=int(users_per_client),
        samples_per_user=int(samples_per_user),
        test_samples_per_user=int(test_samples_per_user),
        history_len=int(history_len),
        min_history_len=min(4, int(history_len)),
        seed=int(seed),
    )
    data = generate_recsys(cfg)  # raises ValueError naming every bad parameter
    if cfg.test_samples_per_user < 1:
        raise ValueError("recsys: test_samples_per_user must be >= 1 (the server evaluates on them)")
    sizes = [len(c) for c in data.clients]
    groups = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    train = CTRSamples(
        **{
            name: torch.cat([getattr(c, name) for c in data.clients])
            for name in ("history", "history_category", "candidate", "category", "label")
        }
    )
    params = {
        "num_items": cfg.num_items,
        "num_categories": cfg.num_categories,
        "num_clients": cfg.num_clients,
        "users_per_client": cfg.users_per_client,
        "samples_per_user": cfg.samples_per_user,
        "test_samples_per_user": cfg.test_samples_per_user,
        "history_len": cfg.history_len,
    }
    return DatasetSplits(
        RECSYS_NAME,
        _packed(train, groups),
        _packed(data.test, None),
        params,
        model_kwargs={"num_items": cfg.num_items, "num_categories": cfg.num_categories},
    )
