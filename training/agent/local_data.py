"""Phone-resident data: a job whose samples never leave the phone reads them from files already there.

Layout (README, "Data that never leaves the phone"): in the phone's work dir, a directory (default
`data/`, the job's `local_data.dir`) holding one of

    train.npz   arrays `x` (n, features...) numeric and `y` (n,) integer labels 0..K-1
    train.csv   a header row, a `label` column, every other column a numeric feature

Samples are reshaped to the job's model input (x may be stored flat) and checked as an upload is — the
same numpy readers (training/fl/data_formats: NPZ read with allow_pickle=False, headers checked before a
byte is unpacked; CSV by the standard library's csv) — so a phone without usable data fails its round
with the reason. Only counts leave the phone, and only when the job allows it (`report`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.agent.round_config import DATA_FILES, AgentError
from training.fl.data_formats.csv_table import read_csv
from training.fl.data_formats.limits import Limits
from training.fl.data_formats.npz_arrays import read_npz
from training.fl.data_formats.problems import Problems
from training.fl.data_formats.tables import Table, check_label_range, check_table, reshape_features


def load_local_data(
    path: Path, *, input_shape: tuple[int, ...], num_classes: int | None, max_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The phone's own samples as (x float32 (n, *input_shape), y int64), or AgentError with every
    problem found ("no usable data on this phone: ...")."""
    if not path.is_file():
        raise AgentError(
            f"no usable data on this phone: {path.parent} holds neither {' nor '.join(DATA_FILES)}"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise AgentError(f"no usable data on this phone: {path.name} is {size} bytes, over {max_bytes}")
    problems = Problems()
    limits = Limits(max_bytes=max_bytes)
    table: Table | None
    if path.suffix == ".npz":
        content = read_npz(path, problems, limits)
        table = content.train if content is not None else None
    else:
        table = read_csv(path.read_bytes(), problems, limits)
    x = None
    if table is not None and check_table(table, problems, limits):
        if num_classes is not None:
            check_label_range(table, num_classes, problems)
        x = reshape_features(table.x, list(input_shape), problems)
    if problems or table is None or x is None:
        raise AgentError(f"no usable data on this phone: {path.name}: " + "; ".join(problems.listing()))
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(table.y.astype(np.int64))


def label_histogram(y: torch.Tensor, num_classes: int) -> list[int]:
    return [int(v) for v in torch.bincount(y, minlength=num_classes)[:num_classes].tolist()]
