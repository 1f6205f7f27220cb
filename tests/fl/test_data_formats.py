"""Federated data sets from files (training/fl/data_formats): LEAF JSON, NPZ and CSV into DatasetSplits,
every malformed file refused with all its problems listed, and the data set page's summary."""

import json
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.fl import nets
from training.fl.data_formats import (
    DataFormatError,
    Limits,
    load_file_dataset,
    read_dataset,
    sniff,
    summarize,
)
from training.fl.datasets import load_digits
from training.fl.partition import partition_dataset


def leaf_document(x: np.ndarray, y: np.ndarray, users: list[str], owner: np.ndarray) -> dict:
    data = {u: {"x": x[owner == k].tolist(), "y": y[owner == k].tolist()} for k, u in enumerate(users)}
    return {"users": users, "num_samples": [len(data[u]["y"]) for u in users], "user_data": data}


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def digits():
    splits = load_digits(seed=0)
    return splits.train.x.reshape(len(splits.train), -1).numpy(), splits.train.y.numpy()


@pytest.fixture
def leaf_file(tmp_path, digits):
    x, y = digits
    x, y = x[:300], y[:300]
    owner = np.arange(300) % 7  # 7 users, in an order that is not alphabetical
    users = ["u6", "u2", "u0", "u5", "u1", "u4", "u3"]
    return write_json(tmp_path / "train.json", leaf_document(x, y, users, owner)), users


def problems_of(path, **kwargs) -> tuple[str, ...]:
    with pytest.raises(DataFormatError) as caught:
        read_dataset(path, **kwargs)
    return caught.value.problems


# ---------------------------------------------------------------------------------------------- LEAF


def test_a_leaf_file_yields_one_client_per_user(leaf_file):
    path, users = leaf_file
    splits = read_dataset(path, seed=0)
    assert splits.name == "leaf" and splits.num_classes == 10 and splits.feature_shape == (64,)
    assert splits.params["client_ids"] == users and splits.params["num_clients"] == 7
    parts = partition_dataset("natural", splits.train, 7, seed=0)
    assert len(parts) == 7
    sizes = [len(p) for p in parts]
    # Each user gives 20% of its ~43 samples to the server's test set and keeps the rest.
    assert sum(sizes) + len(splits.test) == 300
    assert all(33 <= s <= 35 for s in sizes)
    assert len(splits.test) == 300 - sum(sizes) > 0
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64


def test_the_held_out_split_is_fixed_by_the_seed(leaf_file):
    path, _ = leaf_file
    a, b, c = read_dataset(path, seed=4), read_dataset(path, seed=4), read_dataset(path, seed=5)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_a_leaf_test_file_is_the_test_set(tmp_path, leaf_file, digits):
    path, users = leaf_file
    x, y = digits
    test = write_json(tmp_path / "test.json", leaf_document(x[300:340], y[300:340], ["t0"], np.zeros(40)))
    splits = read_dataset(path, test_path=test)
    assert len(splits.train) == 300 and len(splits.test) == 40
    assert splits.params["test"] == "test file" and splits.params["test_fraction"] is None
    np.testing.assert_array_equal(splits.test.y.numpy(), y[300:340])


def test_feature_shape_turns_flat_pixels_into_images_for_the_cnn(leaf_file):
    path, _ = leaf_file
    splits = read_dataset(path, feature_shape=[1, 8, 8])
    assert splits.feature_shape == (1, 8, 8)
    model = nets.build_model("cnn", input_shape=splits.feature_shape, num_classes=splits.num_classes)
    assert model(splits.train.x[:3]).shape == (3, 10)
    assert problems_of(path, feature_shape=[1, 9, 9]) == (
        "feature_shape [1, 9, 9] holds 81 values, but samples have 64 (shape [64])",
    )


def test_leaf_users_without_samples_are_left_out(tmp_path):
    document = {
        "users": ["a", "empty", "b"],
        "num_samples": [2, 0, 2],
        "user_data": {
            "a": {"x": [[0.0], [1.0]], "y": [0, 1]},
            "empty": {"x": [], "y": []},
            "b": {"x": [[2.0], [3.0]], "y": [1, 0]},
        },
    }
    splits = read_dataset(write_json(tmp_path / "d.json", document), test_fraction=0.5)
    assert splits.params["client_ids"] == ["a", "b"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1, 2, 3], ["not a LEAF file: the JSON is a list, LEAF's is an object"]),
        (
            {"users": ["a"], "user_data": {}},
            ["not a LEAF file: missing num_samples (LEAF has users, num_samples and user_data)"],
        ),
        (
            {"users": "a", "num_samples": [1], "user_data": []},
            ["users must be a list of user ids (strings)", "user_data must be an object: user id -> {x, y}"],
        ),
        (
            {"users": ["a", "a", "b"], "num_samples": [1, 1], "user_data": {"a": {}, "c": {}}},
            [
                "users lists 3 users but num_samples has 2 counts",
                "users lists 'a' more than once",
                "user_data has no entry for 1 listed user(s): 'b'",
                "user_data has 1 user(s) not in users: 'c'",
            ],
        ),
        (
            {
                "users": ["a", "b", "c", "d"],
                "num_samples": [2, 1, 1, 1],
                "user_data": {
                    "a": {"x": [[1.0, 2.0], [3.0]], "y": [0, 1]},
                    "b": {"x": ["to be or not to be"], "y": ["e"]},
                    "c": {"x": [[1.0]], "y": [0, 1]},
                    "d": {"y": [0]},
                },
            },
            [
                "user 'a': x rows have different lengths",
                "user 'b': x must hold numbers (text data sets such as Shakespeare and Sent140 need a "
                "tokenizer first)",
                "user 'c': num_samples says 1, but x has 1 and y 2",
                "user 'd': user_data entries must be objects with x and y",
            ],
        ),
        (
            {
                "users": ["a", "b"],
                "num_samples": [1, 1],
                "user_data": {"a": {"x": [[1.0, 2.0]], "y": [0]}, "b": {"x": [[1.0]], "y": [1]}},
            },
            ["user 'b': samples have shape [1], user 'a''s have [2]"],
        ),
    ],
)
def test_a_malformed_leaf_file_is_refused_with_each_reason(tmp_path, document, expected):
    assert list(problems_of(write_json(tmp_path / "d.json", document))) == expected


def test_leaf_values_are_checked_and_located_by_user_and_sample(tmp_path):
    document = {
        "users": ["a", "b"],
        "num_samples": [2, 2],
        "user_data": {
            "a": {"x": [[1.0, 2.0], [3.0, 4.0]], "y": [0, 1]},
            "b": {"x": [[1.0, float("nan")], [3.0, 4.0]], "y": [2, 1.5]},
        },
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(document))  # json writes NaN, which Python's parser (and LEAF's) reads
    assert problems_of(path) == (
        "features hold 1 non-finite value(s) (NaN or infinity), the first at user 'b' sample 0",
        "labels must be integers: 1 are not, the first 1.5 at user 'b' sample 1",
    )


# ------------------------------------------------------------------------------------------------ NPZ


def test_npz_without_client_ids_holds_out_a_stratified_test_set(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "d.npz", x=x[:500], y=y[:500])
    splits = read_dataset(tmp_path / "d.npz", test_fraction=0.2)
    assert splits.train.groups is None and splits.params["num_clients"] is None
    assert len(splits.train) + len(splits.test) == 500
    # Stratified: every class gives about a fifth of its samples.
    train_counts = np.bincount(splits.train.labels, minlength=10)
    test_counts = np.bincount(splits.test.labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * (train_counts + test_counts)) <= 0.5)


def test_npz_client_ids_become_natural_clients(tmp_path, digits):
    x, y = digits
    clients = np.array(["lab-b", "lab-a", "lab-c"])[np.arange(200) % 3]
    np.savez_compressed(tmp_path / "d.npz", X=x[:200], y=y[:200], client_ids=clients)
    splits = read_dataset(tmp_path / "d.npz")
    assert splits.params["client_ids"] == ["lab-b", "lab-a", "lab-c"]  # order of first appearance
    parts = partition_dataset("natural", splits.train, 3, seed=0)
    assert [len(p) for p in parts] == [54, 54, 53]  # 67, 67, 66 samples less a fifth each


def test_npz_integer_client_ids_and_its_own_test_arrays(tmp_path, digits):
    x, y = digits
    np.savez(
        tmp_path / "d.npz",
        x=x[:90].reshape(90, 1, 8, 8),
        y=y[:90].astype(np.uint8),
        clients=np.arange(90) // 30,
        x_test=x[90:120].reshape(30, 1, 8, 8),
        y_test=y[90:120],
    )
    splits = read_dataset(tmp_path / "d.npz")
    assert splits.feature_shape == (1, 8, 8) and len(splits.train) == 90 and len(splits.test) == 30
    assert splits.params["client_ids"] == ["0", "1", "2"] and splits.params["test"] == "x_test/y_test"


def test_an_npz_object_array_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    evil = np.empty(2, dtype=object)
    evil[:] = [Touch(marker), Touch(marker)]
    np.savez(tmp_path / "evil.npz", x=evil, y=np.zeros(2))
    assert problems_of(tmp_path / "evil.npz") == (
        "array 'x' holds Python objects (a pickle), which FedFleet never loads",
    )
    assert not marker.exists()
    pickle.loads(pickle.dumps(Touch(marker)))  # noqa: S301 - shows the payload runs code when unpickled
    assert marker.exists()


class Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_npz_that_unpacks_beyond_the_limit_is_refused_before_it_is_loaded(tmp_path):
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((20_000, 1_000)), y=np.zeros(20_000))
    size = (tmp_path / "bomb.npz").stat().st_size
    assert size < 1_000_000  # 160 MB of zeros compress to almost nothing
    started = time.perf_counter()
    problems = problems_of(tmp_path / "bomb.npz", limits=Limits(max_array_bytes=50_000_000))
    assert problems == ("the arrays unpack to 160160000 bytes, over the limit of 50000000",)
    assert time.perf_counter() - started < 0.5  # only the headers were read


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, ["4 feature rows but 3 labels"]),
        (
            {"x": np.zeros(4), "y": np.zeros(4)},
            ["features must have one row per sample (shape (n, features...)), got shape (4,)"],
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros((4, 1))},
            ["labels must be one per sample (shape (n,)), got shape (4, 1)"],
        ),
        ({"x": np.zeros((4, 2)), "X": np.zeros((4, 2)), "y": np.zeros(4)}, ["holds both x and X: give one"]),
        (
            {"features": np.zeros((4, 2)), "y": np.zeros(4)},
            [
                "unknown array(s) features (an NPZ for FedFleet holds x, X, y, clients, client_ids, groups, x_test, "
                "X_test, y_test)",
                "has no x or X array",
            ],
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros(4), "x_test": np.zeros((1, 2))},
            ["a test set needs both x_test and y_test"],
        ),
        ({"x": np.array([["a", "b"]] * 4), "y": np.arange(4) % 2}, ["features must be numbers, got text"]),
        (
            {"x": np.ones((4, 2), dtype=bool), "y": np.arange(4) % 2},
            ["features must be numbers, got true/false values"],
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4) % 2, "clients": np.array(["a", "", "b", ""])},
            ["2 empty client id(s), the first at sample 1"],
        ),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros(4)},
            ["labels hold a single class (0); a classifier needs at least 2"],
        ),
        (
            {"x": np.full((4, 2), 1e39), "y": np.arange(4) % 2},
            ["features beyond ±3.4e+38 do not fit float32"],
        ),
        (
            {
                "x": np.zeros((4, 2)),
                "y": np.arange(4) % 2,
                "x_test": np.zeros((2, 3)),
                "y_test": np.array([0, 5]),
            },
            ["test samples have shape [3], training samples [2]"],
        ),
    ],
)
def test_a_malformed_npz_is_refused_with_each_reason(tmp_path, arrays, expected):
    np.savez(tmp_path / "d.npz", **arrays)
    assert list(problems_of(tmp_path / "d.npz")) == expected


def test_an_npz_with_foreign_members_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("x.npy", b"not an array")
        archive.writestr("notes.txt", b"hello")
    problems = problems_of(tmp_path / "d.npz")
    assert problems[0].startswith("array 'x': unreadable header (the magic string is not correct")
    assert problems[1] == "holds 'notes.txt', which is not a numpy array (an NPZ holds only .npy files)"


# ------------------------------------------------------------------------------------------------ CSV


def csv_text(x: np.ndarray, y: np.ndarray, clients: list[str] | None = None, label: str = "label") -> str:
    header = [f"p{i}" for i in range(x.shape[1])] + [label] + (["client_id"] if clients else [])
    rows = [",".join(header)]
    for i in range(len(y)):
        cells = [f"{v:g}" for v in x[i]] + [str(int(y[i]))] + ([f'"{clients[i]}"'] if clients else [])
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


def test_csv_without_client_ids(tmp_path, digits):
    x, y = digits
    (tmp_path / "d.csv").write_text(csv_text(x[:100], y[:100]))
    splits = read_dataset(tmp_path / "d.csv")
    assert splits.feature_shape == (64,) and splits.train.groups is None
    assert len(splits.train) + len(splits.test) == 100
    assert torch.allclose(
        torch.sort(torch.cat([splits.train.x, splits.test.x]).sum(1)).values,
        torch.sort(torch.from_numpy(x[:100]).sum(1)).values,
    )


def test_csv_with_a_client_id_column(tmp_path, digits):
    x, y = digits
    clients = [f"phone, {i % 4}" for i in range(120)]  # quoted ids may hold commas
    (tmp_path / "d.csv").write_text(csv_text(x[:120], y[:120], clients))
    splits = read_dataset(tmp_path / "d.csv", seed=1)
    assert splits.params["client_ids"] == ["phone, 0", "phone, 1", "phone, 2", "phone, 3"]
    assert len(partition_dataset("natural", splits.train, 4, seed=0)) == 4
    assert splits.feature_shape == (64,)  # the client id is not a feature


def test_csv_columns_can_be_named(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,digit,site\n1,2,0,x\n3,4,1,y\n5,6,1,x\n7,8,0,y\n")
    splits = read_dataset(tmp_path / "d.csv", label_column="digit", client_column="site", test_fraction=0.5)
    assert splits.params["client_ids"] == ["x", "y"] and splits.feature_shape == (2,)
    assert problems_of(tmp_path / "d.csv") == (
        "no label column 'label' (columns: 'a', 'b', 'digit', 'site')",
    )
    assert problems_of(tmp_path / "d.csv", label_column="digit", client_column="phone") == (
        "no client-id column 'phone' (columns: 'a', 'b', 'digit', 'site')",
    )


def test_every_problem_of_a_csv_is_listed_in_one_error(tmp_path):
    (tmp_path / "d.csv").write_text(
        "f1,f2,label\n"
        "1,2,0\n"
        "1,x,1\n"  # text
        "3,4\n"  # a cell short
        "5,nan,7.5\n"  # NaN feature, fractional label
        "1,2,-1\n"  # negative label
        "1,2,9\n"  # beyond K = 3
    )
    assert problems_of(tmp_path / "d.csv", num_classes=3) == (
        "row 3, feature column 'f2': 'x' is not a number",
        "row 4 has 2 cells, the header has 3",
        "features hold 1 non-finite value(s) (NaN or infinity), the first at row 5",
        "labels must be integers: 1 are not, the first 7.5 at row 5",
        "labels must be class numbers 0..K-1: 1 are negative, the first -1 at row 6",
        "labels must be class numbers 0..2: 2 are larger, the first 7.5 at row 5",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["d.csv is not CSV text: its content is an empty file"]),
        ("1,2,3\n4,5,6\n", ["the first row must be a header naming the columns (it holds numbers)"]),
        ("a,a,label\n1,2,0\n", ["column name(s) 'a' appear more than once"]),
        ("label\n0\n1\n", ["no feature columns: every column but the label (and client id) is a feature"]),
        ("a,label\n", ["no rows under the header"]),
        ("a,label,client_id\n1,0,p\n2,1,\n", ["row 3: empty client id"]),
        (
            "a,label\n1,0\n2,1\n",
            [
                "holding out 20% of each class leaves no test samples: give a test file or a larger test_fraction"
            ],
        ),
    ],
)
def test_a_malformed_csv_is_refused_with_each_reason(tmp_path, text, expected):
    (tmp_path / "d.csv").write_text(text)
    assert list(problems_of(tmp_path / "d.csv")) == expected


def test_a_csv_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "d.csv").write_bytes("a,label\n1,0\n".encode("utf-16"))
    assert problems_of(tmp_path / "d.csv") == ("d.csv is not CSV text: its content is binary data",)
    (tmp_path / "e.csv").write_bytes(b"a,label\n\xff\xfe,0\n")
    assert problems_of(tmp_path / "e.csv") == ("not UTF-8 text (byte 8), so not CSV",)


def test_too_many_rows_is_refused_without_parsing_the_rest(tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n" + "1,0\n2,1\n" * 50)
    assert problems_of(tmp_path / "d.csv", limits=Limits(max_rows=60)) == (
        "more than 60 rows, over the limit",
    )


# ------------------------------------------------------------------------------ every format's checks


def test_not_the_format_it_claims(tmp_path, digits):
    x, y = digits
    (tmp_path / "real.csv").write_text(csv_text(x[:10], y[:10]))
    (tmp_path / "fake.npz").write_bytes((tmp_path / "real.csv").read_bytes())
    np.savez(tmp_path / "real.npz", x=x[:50], y=y[:50])
    (tmp_path / "fake.csv").write_bytes((tmp_path / "real.npz").read_bytes())
    (tmp_path / "fake.json").write_bytes((tmp_path / "real.csv").read_bytes())
    assert problems_of(tmp_path / "fake.npz") == ("fake.npz is not an NPZ archive: its content is CSV text",)
    assert problems_of(tmp_path / "fake.csv") == ("fake.csv is not CSV text: its content is an NPZ archive",)
    assert problems_of(tmp_path / "fake.json") == ("fake.json is not LEAF JSON: its content is CSV text",)
    assert problems_of(tmp_path / "real.npz", format="leaf") == (
        "real.npz is not LEAF JSON: its content is an NPZ archive",
    )
    np.save(tmp_path / "single.npy", x[:10])
    assert problems_of(tmp_path / "single.npy", format="npz") == (
        "single.npy is not an NPZ archive: its content is a single .npy array",
    )
    (tmp_path / "data.txt").write_text("a,label\n")
    assert problems_of(tmp_path / "data.txt") == (
        "cannot tell the format from the name 'data.txt': use .json (LEAF), .npz or .csv",
    )
    assert read_dataset(tmp_path / "real.npz").name == "npz"


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "d.npz", x=x, y=y)
    size = (tmp_path / "d.npz").stat().st_size
    assert problems_of(tmp_path / "d.npz", limits=Limits(max_bytes=size - 1)) == (
        f"d.npz is {size} bytes, over the limit of {size - 1}",
    )
    assert problems_of(tmp_path / "missing.npz") == ("missing.npz: no such file",)


def test_labels_are_checked_against_the_given_number_of_classes_in_both_files(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, 1]))
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 2)), y=np.array([0, 3]))
    assert read_dataset(tmp_path / "train.npz", test_path=tmp_path / "test.npz").num_classes == 4
    assert problems_of(tmp_path / "train.npz", test_path=tmp_path / "test.npz", num_classes=3) == (
        "test set: labels must be class numbers 0..2: 1 are larger, the first 3 at sample 1",
    )
    assert problems_of(tmp_path / "train.npz", num_classes=1) == (
        "num_classes must be an integer in 2..10000, got 1",
    )


def test_problems_of_the_test_file_and_the_options_are_listed_with_the_rest(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.array([[np.inf, 0.0]] * 4), y=np.array([0, 1, 0, 1]))
    (tmp_path / "test.npz").write_text("x,label\n")
    assert problems_of(tmp_path / "train.npz", test_path=tmp_path / "test.npz", test_fraction=2) == (
        "test_fraction must be a number in (0, 1), got 2",
        "features hold 4 non-finite value(s) (NaN or infinity), the first at sample 0",
        "test file test.npz: test.npz is not an NPZ archive: its content is CSV text",
    )


def test_a_long_list_of_problems_is_capped(tmp_path):
    rows = "".join(f"{i},x{i},0\n" for i in range(100))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows)
    problems = problems_of(tmp_path / "d.csv")
    assert len(problems) == 26 and problems[-1] == "(stopped looking after 25 problems)"


def test_sniffing_reads_only_the_first_bytes():
    assert sniff(b"PK\x03\x04rest") == "npz"
    assert sniff(b'\xef\xbb\xbf  {"users"') == "leaf"
    assert sniff(b"a,b\n1,2") == "csv"
    assert sniff(b"\x1f\x8b\x08") == "gzip-compressed data"


def test_the_loader_form_takes_plain_defaults(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.arange(10) % 2)
    splits = load_file_dataset(seed=3, path=str(tmp_path / "d.npz"), num_classes=0)
    assert splits.num_classes == 2
    with pytest.raises(DataFormatError, match="path is required"):
        load_file_dataset()


# -------------------------------------------------------------------------------------------- summary


def test_the_summary_shows_sizes_classes_clients_and_label_mix(tmp_path):
    document = {
        "users": ["big", "small"],
        "num_samples": [6, 2],
        "user_data": {
            "big": {"x": [[float(i)] for i in range(6)], "y": [0, 0, 0, 1, 1, 2]},
            "small": {"x": [[0.0], [1.0]], "y": [2, 2]},
        },
    }
    path = write_json(tmp_path / "d.json", document)
    (tmp_path / "t.json").write_text(
        json.dumps(
            {"users": ["t"], "num_samples": [3], "user_data": {"t": {"x": [[1.0]] * 3, "y": [0, 1, 2]}}}
        )
    )
    summary = summarize(read_dataset(path, test_path=tmp_path / "t.json"))
    json.dumps(summary)  # JSON-able, for the page and the API
    assert summary["samples"] == {"train": 8, "test": 3}
    assert summary["num_classes"] == 3 and summary["feature_shape"] == [1]
    assert summary["bytes"] == 11 * 4 + 11 * 8
    assert summary["label_counts"] == {"train": [3, 2, 3], "test": [1, 1, 1]}
    clients = summary["clients"]
    assert clients["count"] == 2
    assert clients["sizes"] == {"min": 2, "median": 4.0, "mean": 4.0, "max": 6}
    assert sum(clients["histogram"]["counts"]) == 2
    assert clients["histogram"]["edges"][0] == 2 and clients["histogram"]["edges"][-1] > 6
    assert clients["classes_per_client"] == [1, 0, 1]  # one client with 1 class, one with all 3
    assert clients["label_mix"] == [
        {"client": "big", "samples": 6, "label_counts": [3, 2, 1]},
        {"client": "small", "samples": 2, "label_counts": [0, 0, 2]},
    ]


def test_the_summary_of_a_data_set_without_clients(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.arange(10) % 2)
    summary = summarize(read_dataset(tmp_path / "d.npz"))
    assert summary["clients"] is None and summary["samples"] == {"train": 8, "test": 2}


def test_the_histogram_has_integer_bins_covering_every_client(tmp_path, digits):
    x, y = digits
    owner = np.concatenate([np.repeat(np.arange(100), 7), np.full(500, 100)])  # 100 small, one big
    xx, yy = np.concatenate([x, x])[:1200], np.concatenate([y, y])[:1200]
    document = leaf_document(xx, yy, [f"u{i}" for i in range(101)], owner)
    summary = summarize(read_dataset(write_json(tmp_path / "d.json", document)), bins=10)
    histogram = summary["clients"]["histogram"]
    assert len(histogram["counts"]) == len(histogram["edges"]) - 1 <= 10
    assert sum(histogram["counts"]) == 101 and histogram["counts"][0] == 100
    assert all(isinstance(e, int) for e in histogram["edges"])
    assert (
        len(summary["clients"]["label_mix"]) == 100 and summary["clients"]["label_mix"][0]["client"] == "u100"
    )
