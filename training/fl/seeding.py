"""Derived seeds: every random choice in a job gets its own seed from the job seed and a label.

Seeds derived from (job seed, purpose, round, client) — never from a shared RNG stream — are what make a
leave-one-out replay exact: dropping client c from a round changes nothing in any other client's
shuffling, because no client's seed depends on who else was selected.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch.manual_seed and numpy accept it; JSON and SQLite store it as a plain integer


def derive_seed(*parts: object) -> int:
    """A stable integer in [0, 2^63) from any printable parts (independent of PYTHONHASHSEED)."""
    text = "\x1f".join(repr(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
