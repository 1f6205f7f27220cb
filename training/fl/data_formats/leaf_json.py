"""LEAF's JSON format (Caldas et al., "LEAF: A Benchmark for Federated Settings"):

    {"users": ["f0001", ...], "num_samples": [42, ...],
     "user_data": {"f0001": {"x": [[...], ...], "y": [3, ...]}, ...}}

(an optional "hierarchies" list and other extra keys are ignored). Each user becomes one natural client.
FedFleet reads numeric x — FEMNIST's 784 pixels, Synthetic's vectors, CelebA's features — and integer y;
the text benchmarks (Shakespeare, Sent140) hold strings and need a tokenizer first, which is said so.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from training.fl.data_formats.limits import Limits
from training.fl.data_formats.problems import Problems
from training.fl.data_formats.tables import NUMERIC_KINDS, Table

LEAF_KEYS = ("users", "num_samples", "user_data")


def read_leaf(data: bytes, problems: Problems, limits: Limits) -> Table | None:
    """The samples of a LEAF JSON document, one client per user; None (with problems) when unusable."""
    document = _parse_json(data, problems)
    if document is None:
        return None
    if not isinstance(document, dict):
        problems.add(f"not a LEAF file: the JSON is a {type(document).__name__}, LEAF's is an object")
        return None
    missing = [key for key in LEAF_KEYS if key not in document]
    if missing:
        problems.add(
            f"not a LEAF file: missing {', '.join(missing)} (LEAF has users, num_samples and user_data)"
        )
        return None
    users = _check_index(document, problems)
    if users is None:
        return None
    return _samples(users, document["num_samples"], document["user_data"], problems, limits)


def _parse_json(data: bytes, problems: Problems) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        problems.add(f"not UTF-8 text (byte {exc.start}), so not JSON")
    except json.JSONDecodeError as exc:
        problems.add(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        problems.add("not usable JSON: nested too deeply")
    return None


def _check_index(document: dict[str, Any], problems: Problems) -> list[str] | None:
    """users, num_samples and user_data agree with one another."""
    users, counts, user_data = document["users"], document["num_samples"], document["user_data"]
    before = len(problems.found)
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        problems.add("users must be a list of user ids (strings)")
    if not isinstance(counts, list) or not all(_is_count(n) for n in counts):
        problems.add("num_samples must be a list of sample counts (non-negative integers)")
    if not isinstance(user_data, dict):
        problems.add("user_data must be an object: user id -> {x, y}")
    if len(problems.found) > before:
        return None
    if len(users) != len(counts):
        problems.add(f"users lists {len(users)} users but num_samples has {len(counts)} counts")
    duplicates = sorted(u for u, n in Counter(users).items() if n > 1)
    if duplicates:
        problems.add(f"users lists {_some(duplicates)} more than once")
    absent = [u for u in users if u not in user_data]
    if absent:
        problems.add(f"user_data has no entry for {len(absent)} listed user(s): {_some(absent)}")
    unlisted = sorted(set(user_data) - set(users))
    if unlisted:
        problems.add(f"user_data has {len(unlisted)} user(s) not in users: {_some(unlisted)}")
    return users if len(problems.found) == before else None


def _samples(
    users: list[str], counts: list[int], user_data: dict[str, Any], problems: Problems, limits: Limits
) -> Table | None:
    total = sum(counts)
    if total > limits.max_rows:
        problems.add(f"num_samples adds up to {total} samples, over the limit of {limits.max_rows}")
        return None
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    kept: list[str] = []
    shape_of: tuple[tuple[int, ...], str] | None = None  # the first user's sample shape, to compare with
    for user, count in zip(users, counts, strict=True):
        if problems.full():
            problems.stopped = True
            break
        arrays = _user_arrays(user, count, user_data[user], problems)
        if arrays is None or count == 0:  # a user without samples cannot be a client: left out
            continue
        x, y = arrays
        if shape_of is None:
            shape_of = (x.shape[1:], user)
        elif x.shape[1:] != shape_of[0]:
            problems.add(
                f"user {user!r}: samples have shape {list(x.shape[1:])}, "
                f"user {shape_of[1]!r}'s have {list(shape_of[0])}"
            )
            continue
        xs.append(x)
        ys.append(y)
        kept.append(user)
    if problems or not xs:
        if not problems:
            problems.add("no user has any samples")
        return None
    sizes = np.array([len(y) for y in ys])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    clients = np.repeat(np.array(kept), sizes)

    def locate(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return f"user {kept[k]!r} sample {i - int(starts[k])}"

    return Table(np.concatenate(xs), np.concatenate(ys), clients, locate)


def _user_arrays(
    user: str, count: int, entry: Any, problems: Problems
) -> tuple[np.ndarray, np.ndarray] | None:
    if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
        problems.add(f"user {user!r}: user_data entries must be objects with x and y")
        return None
    raw_x, raw_y = entry["x"], entry["y"]
    if not isinstance(raw_x, list) or not isinstance(raw_y, list):
        problems.add(f"user {user!r}: x and y must be lists")
        return None
    if not len(raw_x) == len(raw_y) == count:
        problems.add(f"user {user!r}: num_samples says {count}, but x has {len(raw_x)} and y {len(raw_y)}")
        return None
    if count == 0:
        return np.zeros((0, 1)), np.zeros(0)
    try:
        x = np.asarray(raw_x)
    except ValueError:  # numpy refuses ragged lists
        problems.add(f"user {user!r}: x rows have different lengths")
        return None
    y = np.asarray(raw_y)
    if x.dtype.kind not in NUMERIC_KINDS:
        text = x.dtype.kind == "U"
        hint = " (text data sets such as Shakespeare and Sent140 need a tokenizer first)" if text else ""
        problems.add(f"user {user!r}: x must hold numbers{hint}")
        return None
    if y.dtype.kind not in NUMERIC_KINDS or y.ndim != 1:
        problems.add(f"user {user!r}: y must be a list of integer labels")
        return None
    if x.ndim < 2:
        problems.add(f"user {user!r}: each x must be a list of numbers (a sample), got single numbers")
        return None
    return x, y


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _some(names: list[str], at_most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")
