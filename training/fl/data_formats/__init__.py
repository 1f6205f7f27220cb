"""Federated data sets people already have, read from files: LEAF's JSON, NPZ and CSV (see reader.py).

    splits = read_dataset("femnist_train.json", test_path="femnist_test.json", feature_shape=[1, 28, 28])
    page = summarize(splits)

`read_dataset` raises DataFormatError (a ValueError) listing every problem; `load_file_dataset` is the
same with a loader's signature (keyword-only, `seed=`), ready for the data set registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from training.fl.data_formats.limits import Limits
from training.fl.data_formats.problems import DataFormatError
from training.fl.data_formats.reader import FORMATS, read_dataset, sniff
from training.fl.data_formats.summary import summarize
from training.fl.dataset_types import DatasetSplits

__all__ = ["FORMATS", "DataFormatError", "Limits", "load_file_dataset", "read_dataset", "sniff", "summarize"]


def load_file_dataset(
    *,
    seed: int = 0,
    path: str = "",
    format: str = "",
    test_path: str = "",
    test_fraction: float = 0.2,
    num_classes: int = 0,
    feature_shape: Sequence[int] | None = None,
    label_column: str = "label",
    client_column: str = "",
) -> DatasetSplits:
    """`read_dataset` with plain defaults (empty text / 0 mean "not given"), as job parameters have them."""
    if not path:
        raise DataFormatError("data set file", ["path is required"])
    return read_dataset(
        path,
        format=format or None,
        test_path=test_path or None,
        seed=seed,
        test_fraction=test_fraction,
        num_classes=num_classes or None,
        feature_shape=feature_shape,
        label_column=label_column,
        client_column=client_column or None,
    )
