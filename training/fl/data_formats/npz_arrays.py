"""NPZ archives (numpy.savez / savez_compressed): arrays `x` (or `X`) of shape (n, features...) and `y`
(n,), optional client ids `clients` (or `client_ids`, `groups`: integers or text, one per sample) and an
optional held-out test set `x_test` (or `X_test`) + `y_test`.

Read with allow_pickle=False, always: an object array in an NPZ is a pickle, and unpickling runs code.
Before any array is loaded each member's .npy header is read on its own — dtype and shape — so an
archive that would unpack to more than the limit (a zip bomb), or holds objects, is refused unread.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from training.fl.data_formats.limits import Limits
from training.fl.data_formats.problems import Problems
from training.fl.data_formats.tables import Table

FEATURES = ("x", "X")
LABELS = ("y",)
CLIENTS = ("clients", "client_ids", "groups")
TEST_FEATURES = ("x_test", "X_test")
TEST_LABELS = ("y_test",)
KNOWN = FEATURES + LABELS + CLIENTS + TEST_FEATURES + TEST_LABELS
HEADER_LIMIT = 10_000  # bytes of one .npy header (numpy's own default bound)


@dataclass
class NpzContent:
    train: Table
    test: Table | None


def read_npz(path: Path, problems: Problems, limits: Limits) -> NpzContent | None:
    headers = _headers(path, problems, limits)
    if headers is None:
        return None
    names = _pick_names(set(headers), problems)
    if names is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in names.values() if key is not None}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        problems.add(f"cannot read the arrays: {exc}")
        return None
    clients = arrays.get(names["clients"]) if names["clients"] else None
    train = Table(arrays[names["x"]], arrays[names["y"]], clients)  # type: ignore[index]
    test = None
    if names["x_test"] and names["y_test"]:
        test = Table(arrays[names["x_test"]], arrays[names["y_test"]])
    return NpzContent(train, test)


def _headers(
    path: Path, problems: Problems, limits: Limits
) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """Array name -> (shape, dtype) from each member's header, checked before anything is unpacked."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        problems.add(f"not a valid NPZ (zip) archive: {exc}")
        return None
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or "/" in info.filename:
                problems.add(
                    f"holds {info.filename!r}, which is not a numpy array (an NPZ holds only .npy files)"
                )
                continue
            name = info.filename[: -len(".npy")]
            try:
                with archive.open(info) as member:
                    shape, dtype = _read_header(member)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                problems.add(f"array {name!r}: unreadable header ({exc})")
                continue
            if dtype.hasobject:
                problems.add(f"array {name!r} holds Python objects (a pickle), which FedFleet never loads")
                continue
            total += int(np.prod(shape)) * dtype.itemsize
            headers[name] = (shape, dtype)
    if total > limits.max_array_bytes:
        problems.add(f"the arrays unpack to {total} bytes, over the limit of {limits.max_array_bytes}")
    if not headers and not problems:
        problems.add("the archive holds no arrays")
    return None if problems else headers


def _read_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=HEADER_LIMIT)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=HEADER_LIMIT)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _pick_names(present: set[str], problems: Problems) -> dict[str, str | None] | None:
    """Which array is which; unknown names are refused (a typo would otherwise be silently ignored)."""
    unknown = sorted(present - set(KNOWN))
    if unknown:
        problems.add(f"unknown array(s) {', '.join(unknown)} (an NPZ for FedFleet holds {', '.join(KNOWN)})")
    names: dict[str, str | None] = {}
    for role, options, required in (
        ("x", FEATURES, True),
        ("y", LABELS, True),
        ("clients", CLIENTS, False),
        ("x_test", TEST_FEATURES, False),
        ("y_test", TEST_LABELS, False),
    ):
        found = [name for name in options if name in present]
        if len(found) > 1:
            problems.add(f"holds both {' and '.join(found)}: give one")
        elif required and not found:
            problems.add(f"has no {' or '.join(options)} array")
        names[role] = found[0] if found else None
    if (names["x_test"] is None) != (names["y_test"] is None):
        problems.add("a test set needs both x_test and y_test")
    return None if problems else names
