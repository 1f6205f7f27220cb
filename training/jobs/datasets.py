"""Data sets people bring: checked in full before anything is stored, then kept under the data dir.

    ingest(owner, source, name=..., original_name=..., options=...)  -> DataSet   (or DataFormatError)

The file is copied to a temporary file inside the data dir first and read there with the same reader a
job uses (training/fl/data_formats.read_dataset): shapes, dtypes, finite values, label range, size and
"is it the format it claims". Only a file that passes is renamed into `datasets/<id>/` and gets a row;
a refused one leaves nothing behind, and its DataFormatError lists every problem, one sentence each.

Jobs use a stored data set as the data set "uploaded" with `dataset_params: {"dataset_id": N}`: the
loader registered here (TrainingConfig.ready) reads the stored file by id.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from training.fl.data_formats import FORMATS, DataFormatError, Limits, read_dataset, summarize
from training.fl.data_formats.reader import FORMAT_OF_SUFFIX
from training.fl.dataset_types import DatasetSplits
from training.jobs import storage
from training.models import DataSet

UPLOADED = "uploaded"  # the data set name jobs give to use a stored data set
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SUFFIX_OF_FORMAT = {"leaf": ".json", "npz": ".npz", "csv": ".csv"}
OPTION_KEYS = ("format", "feature_shape", "num_classes", "label_column", "client_column", "test_fraction")
COPY_CHUNK = 1024 * 1024


def max_upload_bytes() -> int:
    """The largest data file accepted (FEDFLEET_DATASET_MAX_BYTES; default 256 MiB)."""
    return int(getattr(settings, "FEDFLEET_DATASET_MAX_BYTES", DEFAULT_MAX_BYTES))


def datasets_dir() -> Path:
    return storage.data_dir() / "datasets"


def dataset_file(dataset: DataSet) -> Path:
    return datasets_dir() / str(dataset.pk) / f"data{SUFFIX_OF_FORMAT[dataset.format]}"


def _format_of(original_name: str, options: Mapping[str, Any]) -> str:
    given = str(options.get("format") or "")
    if given:
        if given not in FORMATS:
            raise DataFormatError(original_name, [f"unknown format {given!r}; known: {', '.join(FORMATS)}"])
        return given
    kind = FORMAT_OF_SUFFIX.get(Path(original_name).suffix.lower())
    if kind is None:
        raise DataFormatError(
            original_name,
            [f"cannot tell the format from the name {original_name!r}: use .json (LEAF), .npz or .csv"],
        )
    return kind


def safe_file_name(original_name: str, suffix: str) -> str:
    """The uploaded file's base name with only letters, digits, '.', '_' and '-' (never a path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(original_name).name)[:120].lstrip(".") or "data"
    return stem if stem.lower().endswith(suffix) else stem + suffix


def read_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """read_dataset's keywords from a data set's stored options."""
    out: dict[str, Any] = {}
    if options.get("feature_shape"):
        out["feature_shape"] = [int(d) for d in options["feature_shape"]]
    if options.get("num_classes"):
        out["num_classes"] = int(options["num_classes"])
    if options.get("label_column"):
        out["label_column"] = str(options["label_column"])
    if options.get("client_column"):
        out["client_column"] = str(options["client_column"])
    if options.get("test_fraction"):
        out["test_fraction"] = float(options["test_fraction"])
    return out


def _copy_bounded(source: IO[bytes], target: IO[bytes], limit: int, name: str) -> tuple[int, str]:
    """Copy at most `limit` bytes (a larger file is refused without reading past the limit)."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(COPY_CHUNK):
        size += len(chunk)
        if size > limit:
            raise DataFormatError(name, [f"{name} is over the limit of {limit} bytes"])
        digest.update(chunk)
        target.write(chunk)
    return size, digest.hexdigest()


def ingest(
    owner: AbstractBaseUser,
    source: IO[bytes],
    *,
    name: str,
    original_name: str,
    options: Mapping[str, Any] | None = None,
    declared_size: int | None = None,
) -> DataSet:
    """Check `source` as a data set and store it; DataFormatError (nothing stored) when it is refused."""
    options = {k: v for k, v in (options or {}).items() if k in OPTION_KEYS and v not in (None, "", [])}
    limit = max_upload_bytes()
    if declared_size is not None and declared_size > limit:
        raise DataFormatError(
            original_name, [f"{original_name} is {declared_size} bytes, over the limit of {limit}"]
        )
    kind = _format_of(original_name, options)
    options["format"] = kind
    datasets_dir().mkdir(parents=True, exist_ok=True)
    # The copy keeps the file's own name (in a private temp folder), so every problem names the file
    # the person uploaded.
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=datasets_dir()))
    temp = incoming / safe_file_name(original_name, SUFFIX_OF_FORMAT[kind])
    try:
        with temp.open("xb") as target:
            size, sha256 = _copy_bounded(source, target, limit, original_name)
        splits = read_dataset(temp, format=kind, limits=Limits(max_bytes=limit), **read_options(options))
        summary = summarize(splits)
        with transaction.atomic():
            dataset = DataSet.objects.create(
                owner=owner,
                name=name.strip()[:120] or Path(original_name).stem[:120],
                format=kind,
                original_name=Path(original_name).name[:255],
                size=size,
                sha256=sha256,
                options=options,
                summary=summary,
            )
            final = dataset_file(dataset)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return dataset


def ingest_path(
    owner: AbstractBaseUser, path: Path, *, name: str, options: Mapping[str, Any] | None = None
) -> DataSet:
    """A data set named by a path on the server (`manage.py import_dataset`): the same checks on a copy."""
    if not path.is_file():
        raise DataFormatError(path.name, [f"{path}: no such file"])
    with path.open("rb") as source:
        return ingest(
            owner,
            source,
            name=name,
            original_name=path.name,
            options=options,
            declared_size=path.stat().st_size,
        )


def delete_dataset(dataset: DataSet) -> None:
    folder = dataset_file(dataset).parent
    dataset.delete()
    shutil.rmtree(folder, ignore_errors=True)


def load_uploaded(*, seed: int = 0, dataset_id: int = 0) -> DatasetSplits:
    """The loader of the data set "uploaded": a stored data set by id (its held-out split by `seed`)."""
    dataset = DataSet.objects.filter(pk=dataset_id).first()
    if dataset is None:
        raise ValueError(f"uploaded: no stored data set #{dataset_id}; upload one on the data sets page")
    splits = read_dataset(
        dataset_file(dataset), format=dataset.format, seed=seed, limits=Limits(max_bytes=max(dataset.size, 1)),
        **read_options(dataset.options),
    )  # fmt: skip
    return DatasetSplits(
        f"{UPLOADED}:{dataset.pk}", splits.train, splits.test, splits.params, splits.model_kwargs
    )


def dataset_problem(dataset_id: Any) -> str | None:
    """Why a job cannot use stored data set `dataset_id` (None: it can)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or dataset_id < 1:
        return "choose a stored data set (dataset_params.dataset_id)"
    if not DataSet.objects.filter(pk=dataset_id).exists():
        return f"no stored data set #{dataset_id}"
    return None


def register_loader() -> None:
    from training.fl.datasets import DATASET_LOADERS  # noqa: PLC0415

    DATASET_LOADERS[UPLOADED] = load_uploaded
