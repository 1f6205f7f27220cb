"""Writing federated data sets in the formats FedFleet reads: a LEAF JSON document from arrays and user
ids (benchmarks, tests), and the NPZ a phone-resident job reads on a phone (x, y; see README)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def leaf_document(x: np.ndarray, y: np.ndarray, users: Sequence[str]) -> bytes:
    """LEAF's {"users", "num_samples", "user_data"} with each sample's features flattened, users in order
    of first appearance."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(y), -1)
    order: list[str] = list(dict.fromkeys(str(u) for u in users))
    members: dict[str, list[int]] = {user: [] for user in order}
    for index, user in enumerate(users):
        members[str(user)].append(index)
    user_data = {
        user: {"x": flat[rows].round(6).tolist(), "y": [int(v) for v in np.asarray(y)[rows]]}
        for user, rows in members.items()
    }
    document = {"users": order, "num_samples": [len(members[u]) for u in order], "user_data": user_data}
    return json.dumps(document, separators=(",", ":")).encode()


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """A phone's own data file: float32 `x` (n, features...) and int64 `y` (n,), uncompressed."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    return buffer.getvalue()


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    Path(path).write_bytes(npz_bytes(x, y))
