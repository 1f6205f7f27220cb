"""The pure safetensors reader/writer (what a phone without the package uses) against the library itself,
both ways, and against hostile headers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load as library_load
from safetensors.torch import save as library_save

from training.fl import safetensors_layout as layout
from training.fl.safetensors_layout import SafetensorsLayoutError

ROOT = Path(__file__).resolve().parents[2]


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b64": torch.randn(5, generator=g, dtype=torch.float64),
        "half": torch.randn(2, 2, generator=g).half(),
        "bf": torch.randn(7, generator=g).bfloat16(),
        "ids": torch.randint(-(2**40), 2**40, (6,), generator=g),
        "i32": torch.randint(-100, 100, (2, 3), generator=g, dtype=torch.int32),
        "i16": torch.tensor([1, -2, 3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def test_library_reads_our_bytes() -> None:
    tensors = sample_tensors()
    assert_same(dict(library_load(layout.dumps(tensors))), tensors)


def test_we_read_the_library_bytes() -> None:
    tensors = sample_tensors()
    assert_same(layout.loads(library_save(tensors)), tensors)


def test_metadata_round_trips_with_the_library(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {"x": torch.arange(4.0)}
    path = tmp_path / "ours.safetensors"
    path.write_bytes(layout.dumps(tensors, {"round": "3", "note": "ü"}))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"round": "3", "note": "ü"}
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    back, meta = layout.loads_with_metadata((tmp_path / "theirs.safetensors").read_bytes())
    assert meta == {"k": "v"} and torch.equal(back["x"], tensors["x"])


def test_non_contiguous_and_sliced_tensors_are_written_as_their_values() -> None:
    base = torch.arange(24.0).reshape(4, 6)
    tensors = {"t": base.t(), "slice": base[1:3, 2:4]}
    back = dict(library_load(layout.dumps(tensors)))
    assert torch.equal(back["t"], base.t()) and torch.equal(back["slice"], base[1:3, 2:4])


def test_loaded_tensors_own_their_memory() -> None:
    data = bytearray(layout.dumps({"a": torch.ones(3), "b": torch.zeros(3)}))
    loaded = layout.loads(data)
    data[-1] = 0xFF  # changing the buffer afterwards must not change the tensors
    loaded["a"].add_(1)
    assert torch.equal(loaded["b"], torch.zeros(3)) and torch.equal(loaded["a"], torch.full((3,), 2.0))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
        st.tuples(
            st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]),
            st.lists(st.integers(0, 4), max_size=3),
        ),
        max_size=5,
    )
)
def test_any_tensor_dict_round_trips_through_both(spec: dict) -> None:
    tensors = {}
    for i, (name, (dtype, shape)) in enumerate(spec.items()):
        g = torch.Generator().manual_seed(i)
        tensors[name] = (torch.rand(shape, generator=g) * 100).to(dtype)
    ours = layout.dumps(tensors)
    assert_same(dict(library_load(ours)), tensors)
    assert_same(layout.loads(library_save(tensors) if tensors else ours), tensors)


# --- hostile headers ---------------------------------------------------------------------------------
def raw_file(header: object, body: bytes = b"", *, declared: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared is None else declared) + text + body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x02", "too short"),
        (raw_file({}, declared=1 << 40), "over the"),
        (raw_file({}, declared=50), "only"),
        (raw_file(b"[1, 2]"), "start with"),
        (raw_file(b"{not json"), "not JSON"),
        (raw_file(b'{"a": 1, "a": 2}'), "twice"),
        (raw_file(b"{" * 5000), "not JSON"),
        (raw_file({"x": {"dtype": "F32", "shape": [1]}}), "exactly"),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}), "exactly"),
        (raw_file({"x": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "dtype"),
        (raw_file({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (raw_file({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (raw_file({"x": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (raw_file({"x": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "needs"),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "needs"),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4), "data_offsets"),
        (
            raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, b"\0" * 4),
            "data_offsets",
        ),
        # a huge claimed shape is caught by arithmetic, never allocated
        (
            raw_file({"x": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8),
            "needs",
        ),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 2), "cover"),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "cover"),
        (
            raw_file(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 8,
            ),
            "holes or overlaps",
        ),
        (raw_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "holes"),
        (raw_file({"__metadata__": {"k": 1}}), "strings"),
        (raw_file({"__metadata__": ["k"]}), "strings"),
        (raw_file({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"), "BOOL"),
    ],
)
def test_hostile_headers_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SafetensorsLayoutError, match=reason):
        layout.loads(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_either_load_or_raise_the_layout_error(data: bytes) -> None:
    try:
        layout.loads(data)
    except SafetensorsLayoutError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_valid_files_never_escape_the_layout_error(data: st.DataObject) -> None:
    valid = bytearray(layout.dumps({"w": torch.arange(6.0).reshape(2, 3), "i": torch.arange(3)}))
    position = data.draw(st.integers(0, len(valid) - 1))
    valid[position] = data.draw(st.integers(0, 255))
    try:
        layout.loads(bytes(valid))
    except SafetensorsLayoutError:
        pass


def test_writer_refuses_what_it_cannot_name() -> None:
    with pytest.raises(SafetensorsLayoutError, match="reserved"):
        layout.dumps({"__metadata__": torch.ones(1)})
    with pytest.raises(SafetensorsLayoutError, match="dtype"):
        layout.dumps({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(SafetensorsLayoutError, match="strings"):
        layout.dumps({"x": torch.ones(1)}, {"k": 1})  # type: ignore[dict-item]


def test_wire_uses_the_pure_layout_when_the_package_is_missing(tmp_path: Path) -> None:
    """In a fresh interpreter where `import safetensors` fails, wire.py still writes files the library
    reads and reads the library's files, with metadata."""
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_bytes(library_save({"a": torch.arange(5)}, metadata={"m": "1"}))
    script = (
        "import sys; sys.modules['safetensors'] = None\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from training.fl import wire\n"
        "assert not wire.HAVE_SAFETENSORS\n"
        "t, meta = wire.load_tensors_with_metadata(Path(sys.argv[1]), max_bytes=1 << 20)\n"
        "assert meta == {'m': '1'} and t['a'].tolist() == [0, 1, 2, 3, 4], (t, meta)\n"
        "wire.save_tensors(Path(sys.argv[2]), {'b': torch.ones(2, 2)}, {'n': '2'})\n"
        "try:\n"
        "    wire.loads_tensors(b'\\x05' + bytes(20), max_bytes=100)\n"
        "except wire.InvalidUpdate as exc:\n"
        "    print('rejected', exc.reason)\n"
    )
    ours = tmp_path / "ours.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script, str(theirs), str(ours)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rejected")
    from safetensors import safe_open

    with safe_open(str(ours), framework="pt") as f:
        assert f.metadata() == {"n": "2"} and torch.equal(f.get_tensor("b"), torch.ones(2, 2))
