"""How large a data file FedFleet accepts (the upload page and `run_job` may pass their own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 * 1024 * 1024  # the file on disk, checked before a byte of it is parsed
    max_rows: int = 2_000_000  # samples, training and test file each
    # What the arrays of an NPZ may unpack to: a compressed archive can be tiny on disk and huge in memory.
    max_array_bytes: int = 2 * 1024 * 1024 * 1024
    max_features: int = 1_000_000  # values per sample
    max_classes: int = 10_000
