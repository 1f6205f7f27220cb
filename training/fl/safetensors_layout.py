"""The safetensors byte layout, read and written with the standard library and torch alone.

A phone with Termux's `python` and `python-torch` has no `safetensors` package (it needs a Rust build), so
the agent falls back to this module when it cannot import it (wire.py chooses). The platform keeps using
the library; both read each other's bytes (tests/fl/test_safetensors_layout.py checks it both ways).

Layout (https://github.com/huggingface/safetensors, "Format"):
    8 bytes   N, little-endian u64: the header's length
    N bytes   JSON object, UTF-8, starting with "{" (trailing spaces pad it to a multiple of 8):
              {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
               "__metadata__": {"<key>": "<string>"}}            (metadata optional)
    rest      the tensors' raw little-endian bytes; offsets are relative to the start of this part, and
              the tensors cover it exactly, in order, without holes or overlaps.

Everything read is untrusted: any header that breaks these rules raises SafetensorsLayoutError (a
ValueError) with the reason, and no byte is interpreted before the whole header was checked.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import Any

import torch

HEADER_PREFIX = struct.Struct("<Q")
MAX_HEADER_BYTES = 100_000_000  # the library's own limit
MAX_DIMS = 64
METADATA_KEY = "__metadata__"
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):  # torch >= 2.3 has these (as storage types)
        _DTYPES[_name] = getattr(torch, _attr)
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsLayoutError(ValueError):
    """Bytes that are not a valid safetensors file (or tensors that cannot be written as one)."""


# --- writing ---------------------------------------------------------------------------------------
def dumps(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise CPU tensors, ordered as the library orders them (wider dtypes first, then by name) so
    every tensor starts on a multiple of its element size."""
    _require_little_endian()
    plain = {name: _plain(name, tensor) for name, tensor in tensors.items()}
    order = sorted(plain, key=lambda name: (-plain[name].element_size(), name))
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = _checked_metadata(metadata)
    offset = 0
    for name in order:
        tensor = plain[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    parts = [HEADER_PREFIX.pack(len(text)), text]
    parts.extend(_raw_bytes(plain[name]) for name in order)
    return b"".join(parts)


def _plain(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(name, str):
        raise SafetensorsLayoutError(f"tensor names must be strings, got {name!r}")
    if name == METADATA_KEY:
        raise SafetensorsLayoutError(f"{METADATA_KEY} is reserved for the metadata")
    if tensor.dtype not in _NAMES:
        raise SafetensorsLayoutError(f"{name}: dtype {tensor.dtype} has no safetensors name")
    return tensor.detach().to("cpu").contiguous()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's memory as bytes (a contiguous CPU tensor: numel × element size from data_ptr)."""
    size = tensor.numel() * tensor.element_size()
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def _checked_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise SafetensorsLayoutError(f"metadata keys and values must be strings: {bad[:3]!r}")
    return dict(metadata)


# --- reading ---------------------------------------------------------------------------------------
def loads(data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    return loads_with_metadata(data)[0]


def loads_with_metadata(
    data: bytes | bytearray | memoryview,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (each in its own memory) and the metadata (empty when there is none)."""
    _require_little_endian()
    view = memoryview(data).cast("B")
    entries, metadata, body_start = parse_header(view)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        tensors[name] = _tensor(view[body_start + begin : body_start + end], dtype, shape, name)
    return tensors, metadata


Entry = tuple[torch.dtype, tuple[int, ...], int, int]  # dtype, shape, begin, end (body-relative)


def parse_header(view: memoryview) -> tuple[dict[str, Entry], dict[str, str], int]:
    """Check the whole header against the buffer; returns the entries, the metadata and where the
    tensor bytes start."""
    if len(view) < HEADER_PREFIX.size:
        raise SafetensorsLayoutError(f"{len(view)} bytes is too short for a safetensors header")
    (header_len,) = HEADER_PREFIX.unpack(view[: HEADER_PREFIX.size])
    if header_len > MAX_HEADER_BYTES:
        raise SafetensorsLayoutError(
            f"header of {header_len} bytes is over the {MAX_HEADER_BYTES}-byte limit"
        )
    body_start = HEADER_PREFIX.size + header_len
    if body_start > len(view):
        raise SafetensorsLayoutError(
            f"header claims {header_len} bytes but only {len(view) - HEADER_PREFIX.size} follow"
        )
    raw = bytes(view[HEADER_PREFIX.size : body_start])
    if not raw.startswith(b"{"):
        raise SafetensorsLayoutError("header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SafetensorsLayoutError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsLayoutError("header is not a JSON object")
    metadata = _metadata(header.pop(METADATA_KEY, None))
    entries = {name: _entry(name, info) for name, info in header.items()}
    _check_coverage(entries, len(view) - body_start)
    return entries, metadata, body_start


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SafetensorsLayoutError(f"header names {key!r} twice")
        result[key] = value
    return result


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SafetensorsLayoutError(f"{METADATA_KEY} must map strings to strings")
    return dict(value)


def _entry(name: str, info: Any) -> Entry:
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise SafetensorsLayoutError(f"{name!r}: an entry needs exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise SafetensorsLayoutError(f"{name!r}: unknown dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_natural(d) for d in shape):
        raise SafetensorsLayoutError(f"{name!r}: shape must be a list of at most {MAX_DIMS} sizes ≥ 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets):
        raise SafetensorsLayoutError(f"{name!r}: data_offsets must be [begin, end] with integers ≥ 0")
    begin, end = offsets
    size = math.prod(shape) * _element_size(dtype)  # Python ints: no overflow on hostile shapes
    if end < begin or end - begin != size:
        raise SafetensorsLayoutError(
            f"{name!r}: data_offsets {offsets} hold {end - begin} bytes, shape {shape} needs {size}"
        )
    return dtype, tuple(shape), begin, end


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_coverage(entries: Mapping[str, Entry], body_len: int) -> None:
    """The tensors tile the data part exactly: sorted by offset, each begins where the last ended."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            raise SafetensorsLayoutError(
                f"{name!r} starts at byte {begin}, expected {position} (holes or overlaps in the data)"
            )
        position = end
    if position != body_len:
        raise SafetensorsLayoutError(f"the tensors cover {position} bytes of data but {body_len} are present")


def _tensor(raw: memoryview, dtype: torch.dtype, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if not len(raw):
        return torch.empty(shape, dtype=dtype)
    # A copy in fresh (aligned, writable) memory: the input may be read-only or unaligned.
    tensor = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    if dtype is torch.bool and max(raw) > 1:
        raise SafetensorsLayoutError(f"{name!r}: BOOL tensor holds bytes other than 0 and 1")
    return tensor


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise SafetensorsLayoutError("this reader handles little-endian machines only (as every phone is)")
