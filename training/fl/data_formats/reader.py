"""Reading a federated data set from a file: format detection, validation, the held-out test split.

`read_dataset(path, ...)` returns the project's `DatasetSplits`: float32 features, int64 labels 0..K-1 and,
when the file names clients (LEAF users, an NPZ's client ids, a CSV's client-id column), `train.groups` —
one natural client per id, in order of first appearance, which partition "natural" turns into one phone
per client. The test split is the file's own (an NPZ's x_test/y_test), or a separate test file, or held out
from the file deterministically by `seed` (holdout.py).

Nothing is used before everything is checked: every problem found — in the file, in the test file, in the
parameters — is listed in one DataFormatError, one sentence each. Checks, in order: the file exists and is
within the size limit (before a byte is parsed); its bytes are the format its name (or `format=`) claims;
the format's own structure; then shapes, dtypes, finite values, integer labels in 0..K-1 and row counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.fl.data_formats.csv_table import DEFAULT_LABEL_COLUMN, read_csv
from training.fl.data_formats.holdout import holdout_indices
from training.fl.data_formats.leaf_json import read_leaf
from training.fl.data_formats.limits import Limits
from training.fl.data_formats.npz_arrays import read_npz
from training.fl.data_formats.problems import DataFormatError, Problems
from training.fl.data_formats.tables import (
    Table,
    check_label_range,
    check_table,
    client_codes,
    infer_num_classes,
    reshape_features,
)
from training.fl.dataset_types import Dataset, DatasetSplits

FORMATS = ("leaf", "npz", "csv")
FORMAT_OF_SUFFIX = {".json": "leaf", ".npz": "npz", ".csv": "csv"}
FORMAT_NAMES = {"leaf": "LEAF JSON", "npz": "an NPZ archive", "csv": "CSV text"}
SNIFF_BYTES = 4096


def sniff(head: bytes) -> str:
    """What the first bytes of a file look like: leaf (JSON), npz (zip), csv (text) or something else."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if b"\x00" in head:
        return "binary data"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith((b"{", b"[")):
        return "leaf"
    return "csv" if stripped else "an empty file"


def describe(kind: str) -> str:
    return FORMAT_NAMES.get(kind, kind)


def claimed_format(path: Path, format: str | None, problems: Problems) -> str | None:
    """The format the caller or the file name says; None (with a problem) when neither says one."""
    if format is not None:
        if format not in FORMATS:
            problems.add(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
            return None
        return format
    by_suffix = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if by_suffix is None:
        problems.add(f"cannot tell the format from the name {path.name!r}: use .json (LEAF), .npz or .csv")
    return by_suffix


def read_table_file(
    path: Path,
    *,
    format: str | None,
    limits: Limits,
    problems: Problems,
    label_column: str = DEFAULT_LABEL_COLUMN,
    client_column: str | None = None,
) -> tuple[Table | None, Table | None]:
    """(samples, the file's own test set if it has one) of one file; problems say why either is None."""
    kind = claimed_format(path, format, problems)
    if not path.is_file():
        problems.add(f"{path.name}: no such file")
        return None, None
    size = path.stat().st_size
    if size > limits.max_bytes:
        problems.add(f"{path.name} is {size} bytes, over the limit of {limits.max_bytes}")
        return None, None
    if kind is None:
        return None, None
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    looks = sniff(head)
    if looks != kind:
        problems.add(f"{path.name} is not {describe(kind)}: its content is {describe(looks)}")
        return None, None
    if kind == "npz":
        content = read_npz(path, problems, limits)
        return (content.train, content.test) if content is not None else (None, None)
    data = path.read_bytes()
    if kind == "leaf":
        return read_leaf(data, problems, limits), None
    return read_csv(data, problems, limits, label_column=label_column, client_column=client_column), None


def read_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    test_path: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    feature_shape: Sequence[int] | None = None,
    label_column: str = DEFAULT_LABEL_COLUMN,
    client_column: str | None = None,
    limits: Limits | None = None,
) -> DatasetSplits:
    """A data file as DatasetSplits, or DataFormatError listing every problem found.

    `format`: leaf, npz or csv (default: from the file name; the content must agree). `test_path`: a test
    file in the same format's rules (its client ids, if any, are not used). `num_classes`: K (default: the
    largest label + 1). `feature_shape`: reshape each sample (e.g. [1, 28, 28] for FEMNIST's 784 pixels).
    `label_column` / `client_column`: the CSV columns (client: `client_id` when present)."""
    limits = limits or Limits()
    path = Path(path)
    problems = Problems()
    _check_options(test_fraction, seed, problems)
    train, own_test = _read_checked(path, format, limits, label_column, client_column, Problems(), problems)
    test = own_test
    if test_path is not None:
        test_problems = Problems(where=f"test file {Path(test_path).name}")
        if own_test is not None:
            problems.add(f"{path.name} has its own x_test/y_test: give a test file or those, not both")
        test, _ = _read_checked(
            Path(test_path), format, limits, label_column, client_column, test_problems, problems
        )
    if train is None or (test_path is not None and test is None):
        raise DataFormatError(f"data set {path.name}", problems.listing())
    tables = [train] + ([test] if test is not None else [])
    _check_same_features(train, test, problems)
    # K from the labels only when they are all whole numbers (no problem so far); a given K is checked
    # against the labels whatever else is wrong, so the one report lists out-of-range labels too.
    k = (
        infer_num_classes(tables, num_classes, problems, limits)
        if num_classes is not None or not problems
        else None
    )
    if k is not None:
        for table, where in ((train, ""), (test, "test set")):
            if table is not None:
                scoped = Problems(where=where)
                check_label_range(table, k, scoped)
                problems.extend(scoped)
    x_train = reshape_features(train.x, feature_shape, problems)
    x_test = reshape_features(test.x, feature_shape, Problems()) if test is not None else None
    problems.raise_if_any(f"data set {path.name}")
    assert k is not None and x_train is not None
    return _splits(path, format, train, x_train, test, x_test, k, seed, test_fraction, test_path, problems)


def _check_options(test_fraction: float, seed: int, problems: Problems) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0 < test_fraction < 1
    ):
        problems.add(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.add(f"seed must be an integer, got {seed!r}")


def _read_checked(
    path: Path,
    format: str | None,
    limits: Limits,
    label_column: str,
    client_column: str | None,
    scoped: Problems,
    problems: Problems,
) -> tuple[Table | None, Table | None]:
    """Read one file and check its tables; its problems (prefixed by `scoped.where`) join `problems`."""
    table, own_test = read_table_file(
        path,
        format=format,
        limits=limits,
        problems=scoped,
        label_column=label_column,
        client_column=client_column,
    )
    if table is not None and not check_table(table, scoped, limits):
        table = None  # not even one row per label: nothing more can be checked
    if own_test is not None:
        test_scope = Problems(where=f"{scoped.where + ' ' if scoped.where else ''}x_test/y_test")
        if not check_table(own_test, test_scope, limits):
            own_test = None
        scoped.extend(test_scope)
    problems.extend(scoped)
    return table, own_test


def _check_same_features(train: Table, test: Table | None, problems: Problems) -> None:
    if test is not None and train.x.shape[1:] != test.x.shape[1:]:
        problems.add(
            f"test samples have shape {list(test.x.shape[1:])}, training samples {list(train.x.shape[1:])}"
        )


def _splits(
    path: Path,
    format: str | None,
    train: Table,
    x_train: np.ndarray,
    test: Table | None,
    x_test: np.ndarray | None,
    k: int,
    seed: int,
    test_fraction: float,
    test_path: str | Path | None,
    problems: Problems,
) -> DatasetSplits:
    y_train = train.y.astype(np.int64)
    groups, client_ids = client_codes(train.clients) if train.clients is not None else (None, [])
    if test is None or x_test is None:
        strata = groups if groups is not None else y_train
        train_idx, test_idx = holdout_indices(strata, test_fraction, seed)
        if len(test_idx) == 0:
            problems.add(
                f"holding out {test_fraction:.0%} of each {'client' if groups is not None else 'class'} "
                "leaves no test samples: give a test file or a larger test_fraction"
            )
            problems.raise_if_any(f"data set {path.name}")
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        if groups is not None:
            groups = groups[train_idx]
        split = "held out"
    else:
        y_test = test.y.astype(np.int64)
        split = "test file" if test_path is not None else "x_test/y_test"
    shape = tuple(int(d) for d in x_train.shape[1:])

    def dataset(x: np.ndarray, y: np.ndarray, g: np.ndarray | None) -> Dataset:
        return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), k, shape, g)

    kind = format or FORMAT_OF_SUFFIX[path.suffix.lower()]
    params: dict[str, Any] = {
        "format": kind,
        "path": str(path),
        "test": split,
        "test_path": None if test_path is None else str(test_path),
        "test_fraction": test_fraction if split == "held out" else None,
        "num_clients": len(client_ids) if groups is not None else None,
        "client_ids": client_ids,
    }
    return DatasetSplits(kind, dataset(x_train, y_train, groups), dataset(x_test, y_test, None), params)
