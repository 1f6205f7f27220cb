"""The wire format for tensors (global weights, updates, data shards) and the checks on every upload.

Tensors travel as safetensors: a length-prefixed JSON header plus raw little-endian bytes. It cannot
execute code on load, unlike pickle / `torch.load`, which the platform never uses on anything a phone
sends. Everything that parses bytes from outside raises `InvalidUpdate(reason)` with a reason a person can
read (the reason is stored on the ClientResult and shown in the UI).

The `safetensors` library does the work when it can be imported (the platform always has it); a phone
without it (Termux's python and python-torch have no Rust-built wheel) reads and writes the same bytes with
safetensors_layout.py, so the agent needs nothing compiled on the phone.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from training.fl import safetensors_layout
from training.fl.safetensors_layout import SafetensorsLayoutError

try:
    from safetensors import SafetensorError
    from safetensors.torch import load as _library_load
    from safetensors.torch import save as _library_save

    HAVE_SAFETENSORS = True
except ImportError:  # a phone without the package: the pure reader/writer below
    HAVE_SAFETENSORS = False

# Parameter name -> float32 CPU tensor (a torch state_dict's items); strategy.py and everything else use it.
Weights = dict[str, torch.Tensor]


DEFAULT_MAX_UPDATE_BYTES = 64 * 1024 * 1024  # far above the lab's models (the digits MLP is ~240 kB)
HEADER_PREFIX_BYTES = 8

Expected = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


class InvalidUpdate(ValueError):
    """An upload (or any tensor file) that must not be used; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def dumps_tensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise named tensors (copied to contiguous CPU memory first; safetensors needs that)."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if not HAVE_SAFETENSORS:
        return safetensors_layout.dumps(plain, metadata)
    return _library_save(plain, metadata=dict(metadata) if metadata else None)


def loads_tensors(data: bytes, *, max_bytes: int) -> Weights:
    """Parse safetensors bytes; a corrupt, truncated or oversized buffer raises InvalidUpdate."""
    if len(data) > max_bytes:
        raise InvalidUpdate(f"update is {len(data)} bytes, over the {max_bytes}-byte limit")
    _check_framing(data)
    if not HAVE_SAFETENSORS:
        try:
            return safetensors_layout.loads(data)
        except SafetensorsLayoutError as exc:
            raise InvalidUpdate(f"not a valid safetensors file: {exc}") from None
    try:
        return dict(_library_load(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidUpdate(f"not a valid safetensors file: {exc}") from None


def loads_tensors_with_metadata(data: bytes, *, max_bytes: int) -> tuple[Weights, dict[str, str]]:
    """`loads_tensors`, and the file's `__metadata__` strings (checked by the same header parser either
    way, so both backends agree on what a valid header is)."""
    tensors = loads_tensors(data, max_bytes=max_bytes)
    try:
        _, metadata, _ = safetensors_layout.parse_header(memoryview(data))
    except SafetensorsLayoutError as exc:
        raise InvalidUpdate(f"not a valid safetensors file: {exc}") from None
    return tensors, metadata


def _check_framing(data: bytes) -> None:
    """The cheap structural checks, so truncation gets a plain-English reason."""
    if len(data) < HEADER_PREFIX_BYTES:
        raise InvalidUpdate(f"truncated tensor file: {len(data)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:HEADER_PREFIX_BYTES])
    if HEADER_PREFIX_BYTES + header_len > len(data):
        raise InvalidUpdate(
            f"truncated tensor file: header claims {header_len} bytes but only "
            f"{len(data) - HEADER_PREFIX_BYTES} follow"
        )
    try:
        header = json.loads(data[HEADER_PREFIX_BYTES : HEADER_PREFIX_BYTES + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: hostile nesting
        raise InvalidUpdate("corrupt tensor file: header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidUpdate("corrupt tensor file: header is not a JSON object")
    ends = [
        info["data_offsets"][1]
        for name, info in header.items()
        if name != "__metadata__"
        and isinstance(info, dict)
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
    ]
    body = len(data) - HEADER_PREFIX_BYTES - header_len
    if ends and all(isinstance(e, int) for e in ends) and max(ends) > body:
        raise InvalidUpdate(
            f"truncated tensor file: data needs {max(ends)} bytes but only {body} are present"
        )
    # Then the whole header, strictly (offsets, dtypes, shapes, exact coverage), by the same parser
    # whichever backend loads the tensors: a header the library might accept or crash on is refused here.
    try:
        safetensors_layout.parse_header(memoryview(data))
    except SafetensorsLayoutError as exc:
        raise InvalidUpdate(f"corrupt tensor file: {exc}") from None


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> int:
    """Write atomically (temp file + rename) so a reader never sees half a file; returns the size."""
    data = dumps_tensors(tensors, metadata)
    write_bytes_atomic(path, data)
    return len(data)


def load_tensors(path: Path, *, max_bytes: int) -> Weights:
    """Read a tensor file, checking its size before reading it into memory."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidUpdate(f"missing tensor file {path}") from None
    if size > max_bytes:
        raise InvalidUpdate(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
    return loads_tensors(path.read_bytes(), max_bytes=max_bytes)


def load_tensors_with_metadata(path: Path, *, max_bytes: int) -> tuple[Weights, dict[str, str]]:
    """A tensor file and its metadata (SCAFFOLD's c_i, the index-privacy memo), size checked first."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidUpdate(f"missing tensor file {path}") from None
    if size > max_bytes:
        raise InvalidUpdate(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
    return loads_tensors_with_metadata(path.read_bytes(), max_bytes=max_bytes)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def validate_update(tensors: Mapping[str, torch.Tensor], expected: Expected, *, max_bytes: int) -> list[str]:
    """Every reason this upload must be rejected (empty list = valid): missing or unexpected names, wrong
    shape or dtype, NaN/inf values, total size over `max_bytes`."""
    errors: list[str] = []
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        errors.append(f"missing tensors: {', '.join(missing)}")
    if extra:
        errors.append(f"unexpected tensors: {', '.join(extra)}")
    size = tensor_bytes(tensors)
    if size > max_bytes:
        errors.append(f"update holds {size} bytes of tensors, over the {max_bytes}-byte limit")
    for name in sorted(set(expected) & set(tensors)):
        errors.extend(_tensor_errors(name, tensors[name], *expected[name]))
    return errors


def _tensor_errors(name: str, tensor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> list[str]:
    if tuple(tensor.shape) != tuple(shape):
        return [f"{name}: shape {list(tensor.shape)}, expected {list(shape)}"]
    if tensor.dtype != dtype:
        return [f"{name}: dtype {_dtype_name(tensor.dtype)}, expected {_dtype_name(dtype)}"]
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int((~finite).sum()) - nan
            return [f"{name}: {nan} NaN and {inf} infinite values"]
    return []


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_update(tensors: Mapping[str, torch.Tensor], expected: Expected, *, max_bytes: int) -> None:
    """`validate_update`, raising InvalidUpdate with all reasons joined by '; '."""
    errors = validate_update(tensors, expected, max_bytes=max_bytes)
    if errors:
        raise InvalidUpdate("; ".join(errors))


def load_update(data: bytes, expected: Expected, *, max_bytes: int) -> Weights:
    """Parse and validate an upload in one go — what the engine does with a pulled update file."""
    tensors = loads_tensors(data, max_bytes=max_bytes)
    check_update(tensors, expected, max_bytes=max_bytes)
    return tensors
