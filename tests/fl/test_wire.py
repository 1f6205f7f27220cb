import re
import struct

import pytest
import torch

from training.fl import wire
from training.fl.wire import InvalidUpdate

LIMIT = 1_000_000


def sample():
    return {"layer.weight": torch.randn(4, 3), "layer.bias": torch.zeros(4), "steps": torch.tensor([3])}


def expected_of(tensors):
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def test_round_trip_preserves_names_values_dtypes():
    tensors = sample()
    data = wire.dumps_tensors(tensors, metadata={"agent": "1"})
    back = wire.loads_tensors(data, max_bytes=LIMIT)
    assert set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k])


def test_non_contiguous_tensors_are_serialised():
    t = torch.arange(12.0).reshape(3, 4).t()
    back = wire.loads_tensors(wire.dumps_tensors({"t": t}), max_bytes=LIMIT)
    assert torch.equal(back["t"], t)


def test_file_helpers_write_atomically_and_check_size(tmp_path):
    path = tmp_path / "sub" / "update.safetensors"
    size = wire.save_tensors(path, sample())
    assert path.stat().st_size == size
    assert [p.name for p in path.parent.iterdir()] == ["update.safetensors"]  # no temp file left
    assert set(wire.load_tensors(path, max_bytes=LIMIT)) == set(sample())
    with pytest.raises(InvalidUpdate, match="over the 10-byte limit"):
        wire.load_tensors(path, max_bytes=10)
    with pytest.raises(InvalidUpdate, match="missing tensor file"):
        wire.load_tensors(tmp_path / "nope.safetensors", max_bytes=LIMIT)


def test_valid_update_has_no_errors():
    tensors = sample()
    assert wire.validate_update(tensors, expected_of(tensors), max_bytes=LIMIT) == []
    wire.check_update(tensors, expected_of(tensors), max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda t: t["layer.weight"].__setitem__((0, 0), float("nan")),
            r"layer.weight: 1 NaN and 0 infinite",
        ),
        (lambda t: t["layer.bias"].__setitem__(1, float("inf")), r"layer.bias: 0 NaN and 1 infinite"),
        (lambda t: t["layer.bias"].__setitem__(2, float("-inf")), r"layer.bias: 0 NaN and 1 infinite"),
        (
            lambda t: t.__setitem__("layer.weight", torch.zeros(3, 4)),
            r"layer.weight: shape \[3, 4\], expected \[4, 3\]",
        ),
        (
            lambda t: t.__setitem__("layer.bias", torch.zeros(4, dtype=torch.float64)),
            r"dtype float64, expected float32",
        ),
        (
            lambda t: t.__setitem__("layer.bias", torch.zeros(4, dtype=torch.float16)),
            r"dtype float16, expected float32",
        ),
        (lambda t: t.pop("layer.bias"), r"missing tensors: layer.bias"),
        (lambda t: t.__setitem__("evil", torch.zeros(1)), r"unexpected tensors: evil"),
    ],
)
def test_each_kind_of_bad_update_is_named(mutate, reason):
    expected = expected_of(sample())
    tensors = sample()
    mutate(tensors)
    errors = wire.validate_update(tensors, expected, max_bytes=LIMIT)
    assert len(errors) == 1, errors
    assert re.search(reason, errors[0]), errors
    with pytest.raises(InvalidUpdate, match=reason):
        wire.check_update(tensors, expected, max_bytes=LIMIT)


def test_oversized_update_is_rejected():
    tensors = sample()
    errors = wire.validate_update(tensors, expected_of(tensors), max_bytes=16)
    assert errors == ["update holds 72 bytes of tensors, over the 16-byte limit"]
    with pytest.raises(InvalidUpdate, match="over the 16-byte limit"):
        wire.loads_tensors(wire.dumps_tensors(tensors), max_bytes=16)


def test_several_problems_are_all_reported():
    tensors = {"layer.weight": torch.full((4, 3), float("nan")), "x": torch.zeros(1)}
    errors = wire.validate_update(tensors, expected_of(sample()), max_bytes=LIMIT)
    assert len(errors) == 3
    with pytest.raises(InvalidUpdate) as info:
        wire.check_update(tensors, expected_of(sample()), max_bytes=LIMIT)
    assert info.value.reason.count(";") == 2


@pytest.mark.parametrize("cut", [0, 3, 8, 20, -1, -13])
def test_truncated_bytes_give_a_clear_error(cut):
    data = wire.dumps_tensors(sample())
    with pytest.raises(InvalidUpdate, match="truncated|not a valid safetensors"):
        wire.loads_tensors(data[:cut], max_bytes=LIMIT)


def test_corrupt_header_is_rejected():
    data = bytearray(wire.dumps_tensors(sample()))
    data[8:12] = b"\xff\xfe!!"
    with pytest.raises(InvalidUpdate, match="corrupt tensor file"):
        wire.loads_tensors(bytes(data), max_bytes=LIMIT)


def test_a_pickle_is_not_accepted(tmp_path):
    path = tmp_path / "update.safetensors"
    torch.save(sample(), path)  # what a careless or hostile phone might send
    with pytest.raises(InvalidUpdate):
        wire.load_tensors(path, max_bytes=LIMIT)


def test_header_lying_about_offsets_is_rejected():
    header = b'{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    data = struct.pack("<Q", len(header)) + header + b"\x00" * 16
    with pytest.raises(InvalidUpdate, match="truncated tensor file: data needs 4000 bytes"):
        wire.loads_tensors(data, max_bytes=LIMIT)


def test_load_update_parses_and_validates():
    tensors = sample()
    data = wire.dumps_tensors(tensors)
    assert set(wire.load_update(data, expected_of(tensors), max_bytes=LIMIT)) == set(tensors)
    other = {**expected_of(tensors), "layer.bias": ((5,), torch.float32)}
    with pytest.raises(InvalidUpdate, match="layer.bias: shape"):
        wire.load_update(data, other, max_bytes=LIMIT)
