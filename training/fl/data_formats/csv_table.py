"""CSV tables: a header row naming the columns, then one sample per row — feature columns (numbers), a
label column (integer class numbers; `label` unless named otherwise) and optionally a client-id column
(`client_id` when present, or the column named; any text). Comma-separated, UTF-8, quotes allowed.

numpy's C parser reads the numbers; only a file it refuses is scanned again row by row in Python to
name every bad row and cell (up to the listing limit), since numpy stops at the first.
"""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np

from training.fl.data_formats.limits import Limits
from training.fl.data_formats.problems import Problems
from training.fl.data_formats.tables import Table

DEFAULT_LABEL_COLUMN = "label"
DEFAULT_CLIENT_COLUMN = "client_id"


def read_csv(
    data: bytes,
    problems: Problems,
    limits: Limits,
    *,
    label_column: str = DEFAULT_LABEL_COLUMN,
    client_column: str | None = None,
) -> Table | None:
    """`client_column=None` uses a `client_id` column if there is one; a named column must exist."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.add(f"not UTF-8 text (byte {exc.start}), so not CSV")
        return None
    header = _header(text, problems)
    if header is None:
        return None
    columns = _columns(header, label_column, client_column, problems)
    if columns is None:
        return None
    label_index, client_index = columns
    codes: dict[str, int] = {}

    def client_code(cell: str) -> float:
        cell = cell.strip()
        if not cell:
            raise ValueError("empty client id")
        return float(codes.setdefault(cell, len(codes)))

    try:
        with warnings.catch_warnings():  # an empty body is reported below, in words
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            values = np.loadtxt(
                io.StringIO(text),
                delimiter=",",
                skiprows=1,
                dtype=np.float64,
                ndmin=2,
                comments=None,
                quotechar='"',
                max_rows=limits.max_rows + 1,  # one more than allowed is enough to know there are too many
                converters={client_index: client_code} if client_index is not None else None,
            )
    except ValueError as exc:
        # The rows that do parse still go through the value checks, so the one report lists those too.
        return _diagnose(text, header, label_index, client_index, problems, limits, str(exc))
    if values.shape[0] > limits.max_rows:
        problems.add(f"more than {limits.max_rows} rows, over the limit")
        return None
    if values.shape[0] == 0:
        problems.add("no rows under the header")
        return None
    feature_columns = [i for i in range(len(header)) if i not in (label_index, client_index)]
    clients = None
    if client_index is not None:
        names = np.array(list(codes))  # code k -> the id first seen k-th
        clients = names[values[:, client_index].astype(np.int64)]
    return Table(values[:, feature_columns], values[:, label_index], clients, lambda i: f"row {i + 2}")


def _header(text: str, problems: Problems) -> list[str] | None:
    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error as exc:
        problems.add(f"the header row is not valid CSV: {exc}")
        return None
    if not header:
        problems.add("empty: a CSV needs a header row and one row per sample")
        return None
    names = [name.strip() for name in header]
    if all(_is_number(name) for name in names):
        problems.add("the first row must be a header naming the columns (it holds numbers)")
        return None
    return names


def _columns(
    header: list[str], label_column: str, client_column: str | None, problems: Problems
) -> tuple[int, int | None] | None:
    before = len(problems.found)
    empty = [i + 1 for i, name in enumerate(header) if not name]
    if empty:
        problems.add(f"column(s) {', '.join(map(str, empty))} of the header have no name")
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        problems.add(f"column name(s) {', '.join(map(repr, repeated))} appear more than once")
    if label_column not in header:
        problems.add(f"no label column {label_column!r} (columns: {_list(header)})")
    client_name = client_column if client_column is not None else DEFAULT_CLIENT_COLUMN
    if client_column is not None and client_column not in header:
        problems.add(f"no client-id column {client_column!r} (columns: {_list(header)})")
    if client_column is not None and client_column == label_column:
        problems.add("the label column cannot also be the client-id column")
    if len(problems.found) > before:
        return None
    client_index = header.index(client_name) if client_name in header else None
    if len(header) - 1 - (client_index is not None) < 1:
        problems.add("no feature columns: every column but the label (and client id) is a feature")
        return None
    return header.index(label_column), client_index


def _diagnose(
    text: str,
    header: list[str],
    label_index: int,
    client_index: int | None,
    problems: Problems,
    limits: Limits,
    parser_message: str,
) -> Table | None:
    """Row by row: each row with the wrong number of cells, each cell that is not a number, each empty
    client id. Returns the rows that parse (their problems are still to be found), or None."""
    before = len(problems.found)
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    good: list[list[float]] = []
    clients: list[str] = []
    row_numbers: list[int] = []
    try:
        for row_number, row in enumerate(reader, start=2):
            if problems.full():
                problems.stopped = True
                break
            if row_number - 1 > limits.max_rows:
                break
            if not row:
                continue
            parsed = _parse_row(row, row_number, header, label_index, client_index, problems)
            if parsed is not None:
                good.append(parsed[0])
                clients.append(parsed[1])
                row_numbers.append(row_number)
    except csv.Error as exc:
        problems.add(f"not valid CSV at line {reader.line_num}: {exc}")
    if len(problems.found) == before:  # numpy refused something the row scan accepts: say what numpy said
        problems.add(f"cannot be parsed: {parser_message}")
    if not good:
        return None
    values = np.array(good, dtype=np.float64)
    features = [i for i in range(len(header)) if i not in (label_index, client_index)]
    ids = np.array(clients) if client_index is not None else None
    return Table(values[:, features], values[:, label_index], ids, lambda i: f"row {row_numbers[i]}")


def _parse_row(
    row: list[str],
    row_number: int,
    header: list[str],
    label_index: int,
    client_index: int | None,
    problems: Problems,
) -> tuple[list[float], str] | None:
    if len(row) != len(header):
        problems.add(f"row {row_number} has {len(row)} cells, the header has {len(header)}")
        return None
    values: list[float] = []
    client = ""
    ok = True
    for index, cell in enumerate(row):
        if index == client_index:
            client = cell.strip()
            if not client:
                problems.add(f"row {row_number}: empty client id")
                ok = False
            values.append(0.0)
        elif _is_number(cell):
            values.append(float(cell))
        else:
            what = "label" if index == label_index else "feature"
            problems.add(f"row {row_number}, {what} column {header[index]!r}: {cell!r} is not a number")
            ok = False
    return (values, client) if ok else None


def _is_number(text: str) -> bool:
    try:
        float(text.strip().replace("_", "x"))  # Python accepts 1_000; numpy's parser does not
    except ValueError:
        return False
    return True


def _list(names: list[str], at_most: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")
