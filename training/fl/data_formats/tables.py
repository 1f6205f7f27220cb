"""What every reader extracts (`Table`: features, labels, client ids) and the checks they share: shapes,
dtypes, finite values, integer labels in 0..K-1, sizes. Readers report problems; nothing here raises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.fl.data_formats.limits import Limits
from training.fl.data_formats.problems import Problems

FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMERIC_KINDS = "iuf"  # booleans, complex numbers, text and objects are not features


def locate_index(i: int) -> str:
    return f"sample {i}"


@dataclass
class Table:
    """Samples as read: `x` (n, *shape) numbers, `y` (n,) labels, `clients` (n,) client ids or None;
    `locate(i)` names sample i in the file's own terms ("row 18", "user 'f0012' sample 4")."""

    x: np.ndarray
    y: np.ndarray
    clients: np.ndarray | None = None
    locate: Callable[[int], str] = locate_index

    def __len__(self) -> int:
        return int(self.y.shape[0]) if self.y.ndim else 0


def check_table(table: Table, problems: Problems, limits: Limits) -> bool:
    """Shapes, dtypes, sizes and values of one table, every problem added. Returns whether the table's
    structure is usable (one numeric row per label) — so that the label range can still be checked on a
    table with, say, NaN features, and the one exception lists both."""
    x, y = table.x, table.y
    before = len(problems.found)
    if y.ndim != 1:
        problems.add(f"labels must be one per sample (shape (n,)), got shape {y.shape}")
    if x.ndim < 2:
        problems.add(f"features must have one row per sample (shape (n, features...)), got shape {x.shape}")
    elif y.ndim == 1 and x.shape[0] != y.shape[0]:
        problems.add(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    if len(problems.found) > before:
        return False
    if len(table) == 0:
        problems.add("no samples")
        return False
    if len(table) > limits.max_rows:
        problems.add(f"{len(table)} samples, over the limit of {limits.max_rows}")
    features = int(np.prod(x.shape[1:]))
    if features == 0:
        problems.add("samples have no features")
    elif features > limits.max_features:
        problems.add(f"{features} features per sample, over the limit of {limits.max_features}")
    numeric = _check_features(table, problems)
    numeric = _check_labels(table, problems) and numeric
    if table.clients is not None:
        _check_clients(table, problems)
    return numeric


def _check_features(table: Table, problems: Problems) -> bool:
    x = table.x
    if x.dtype.kind not in NUMERIC_KINDS:
        problems.add(f"features must be numbers, got {_dtype_words(x.dtype)}")
        return False
    finite = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, dtype=bool)
    if not finite.all():
        first = int(np.argwhere(~finite)[0][0])
        problems.add(
            f"features hold {int((~finite).sum())} non-finite value(s) (NaN or infinity), "
            f"the first at {table.locate(first)}"
        )
    if x.size and float(np.abs(np.where(finite, x, 0)).max()) > FLOAT32_MAX:
        problems.add(f"features beyond ±{FLOAT32_MAX:.3g} do not fit float32")
    return True


def _check_labels(table: Table, problems: Problems) -> bool:
    """Integers >= 0 (the upper end, K - 1, is checked once K is known)."""
    y = table.y
    if y.dtype.kind not in NUMERIC_KINDS:
        problems.add(f"labels must be integers, got {_dtype_words(y.dtype)}")
        return False
    if y.dtype.kind == "f":
        finite = np.isfinite(y)
        whole = np.where(finite, y, 0.0)
        fractional = ~finite | (np.floor(whole) != whole)
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            problems.add(
                f"labels must be integers: {int(fractional.sum())} are not, "
                f"the first {_show(y[first])} at {table.locate(first)}"
            )
    negative = y < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        problems.add(
            f"labels must be class numbers 0..K-1: {int(negative.sum())} are negative, "
            f"the first {_show(y[first])} at {table.locate(first)}"
        )
    return True


def _check_clients(table: Table, problems: Problems) -> None:
    clients = table.clients
    assert clients is not None
    if clients.ndim != 1 or clients.shape[0] != len(table):
        problems.add(f"client ids must be one per sample, got shape {clients.shape} for {len(table)} samples")
    elif clients.dtype.kind not in "iuU":
        problems.add(f"client ids must be integers or text, got {_dtype_words(clients.dtype)}")
    elif clients.dtype.kind == "U":
        empty = clients == ""
        if empty.any():
            problems.add(
                f"{int(empty.sum())} empty client id(s), the first at {table.locate(int(np.flatnonzero(empty)[0]))}"
            )


def check_label_range(table: Table, num_classes: int, problems: Problems) -> None:
    """Labels of a table that passed `check_table` against the job's K classes."""
    over = table.y >= num_classes
    if over.any():
        first = int(np.flatnonzero(over)[0])
        problems.add(
            f"labels must be class numbers 0..{num_classes - 1}: {int(over.sum())} are larger, "
            f"the first {_show(table.y[first])} at {table.locate(first)}"
        )


def infer_num_classes(
    tables: Sequence[Table], given: int | None, problems: Problems, limits: Limits
) -> int | None:
    """K: `given`, else the largest label + 1 over all tables (the test set may hold the top class)."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or not 2 <= given <= limits.max_classes:
            problems.add(f"num_classes must be an integer in 2..{limits.max_classes}, got {given!r}")
            return None
        return given
    top = max(int(t.y.max()) for t in tables)
    if top + 1 < 2:
        problems.add("labels hold a single class (0); a classifier needs at least 2")
        return None
    if top + 1 > limits.max_classes:
        problems.add(f"labels go up to {top}: {top + 1} classes, over the limit of {limits.max_classes}")
        return None
    return top + 1


def reshape_features(
    x: np.ndarray, feature_shape: Sequence[int] | None, problems: Problems
) -> np.ndarray | None:
    """Features as float32 of shape (n, *feature_shape) (e.g. FEMNIST's 784 pixels as (1, 28, 28))."""
    if feature_shape is None:
        return _float32(x)
    shape = tuple(feature_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        problems.add(f"feature_shape must be a list of positive integers, got {list(feature_shape)!r}")
        return None
    if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
        problems.add(
            f"feature_shape {list(shape)} holds {int(np.prod(shape))} values, "
            f"but samples have {int(np.prod(x.shape[1:]))} (shape {list(x.shape[1:])})"
        )
        return None
    return _float32(x.reshape((x.shape[0], *shape)))


def _float32(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # values beyond float32 are already a reported problem
        return x.astype(np.float32)


def client_codes(clients: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Client ids as codes 0..C-1 in order of first appearance (LEAF's users list order), and the ids."""
    names, first, inverse = np.unique(clients, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique's sorted order -> appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse].astype(np.int64), [str(names[i]) for i in order]


def _dtype_words(dtype: np.dtype) -> str:
    kind = {
        "b": "true/false values",
        "U": "text",
        "S": "bytes",
        "O": "Python objects",
        "c": "complex numbers",
    }
    return kind.get(dtype.kind, f"dtype {dtype}")


def _show(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return str(int(number)) if number.is_integer() else repr(number)
