"""adbd's side of ADB authentication: the `adb_keys` format and RSA signature checks.

Each `adb_keys` line is `base64(struct RSAPublicKey) comment`, the struct being (little-endian)
u32 modulus_size_words (=64), u32 n0inv, u8 n[256], u8 rr[256], u32 exponent — 524 bytes for RSA-2048.
The host signs the 20-byte token with PKCS#1 v1.5 using SHA-1's DigestInfo but *no hashing*: the token is
used as the digest itself (AOSP `daemon/auth.cpp`, `RSA_verify(NID_sha1, token, ...)`).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

KEY_STRUCT = struct.Struct("<II256s256sI")
MODULUS_WORDS = 64
TOKEN_SIZE = 20
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


class InvalidKey(ValueError):
    """A line or payload that is not an Android RSA public key."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    modulus: int
    exponent: int
    line: str  # the adb_keys line it came from (base64 + comment), for appending

    @property
    def size_bytes(self) -> int:
        return (self.modulus.bit_length() + 7) // 8


def parse_key_line(line: str) -> PublicKey:
    """Decode one `adb_keys` line (or an AUTH RSAPUBLICKEY payload without its NUL)."""
    fields = line.strip().split(maxsplit=1)
    if not fields:
        raise InvalidKey("empty key")
    try:
        blob = base64.b64decode(fields[0], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"not base64: {exc}") from None
    if len(blob) != KEY_STRUCT.size:
        raise InvalidKey(f"key struct is {len(blob)} bytes, expected {KEY_STRUCT.size}")
    words, _n0inv, modulus, _rr, exponent = KEY_STRUCT.unpack(blob)
    if words != MODULUS_WORDS:
        raise InvalidKey(f"modulus of {words} words, expected {MODULUS_WORDS}")
    n = int.from_bytes(modulus, "little")
    if n.bit_length() < 2040 or exponent < 3 or exponent % 2 == 0:
        raise InvalidKey("implausible RSA-2048 key")
    return PublicKey(modulus=n, exponent=exponent, line=line.strip())


def parse_keys_text(text: str) -> list[PublicKey]:
    """All valid keys of an adb_keys file; bad lines are skipped, as adbd does."""
    keys = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                keys.append(parse_key_line(line))
            except InvalidKey:
                continue
    return keys


def expected_signed_block(token: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of the token as a SHA-1 digest: 00 01 FF.. 00 DigestInfo token."""
    suffix = _SHA1_DIGEST_INFO + token
    return b"\x00\x01" + b"\xff" * (size - len(suffix) - 3) + b"\x00" + suffix


def verify_signature(key: PublicKey, token: bytes, signature: bytes) -> bool:
    size = key.size_bytes
    if len(signature) != size:
        return False
    value = int.from_bytes(signature, "big")
    if value >= key.modulus:
        return False
    recovered = pow(value, key.exponent, key.modulus).to_bytes(size, "big")
    return recovered == expected_signed_block(token, size)


def new_token() -> bytes:
    return os.urandom(TOKEN_SIZE)


class KeyStore:
    """The keys one phone trusts: a shared read-only `adb_keys` file plus the keys this phone accepted
    (its own file, like /data/misc/adb/adb_keys after "Always allow"). Files are re-read when they change,
    so a key added while the lab runs counts on the next connection."""

    def __init__(self, trusted_file: Path | None, accepted_file: Path) -> None:
        self._trusted_file = trusted_file
        self._accepted_file = accepted_file
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[float, int, list[PublicKey]]] = {}

    def keys(self) -> list[PublicKey]:
        files = [f for f in (self._trusted_file, self._accepted_file) if f is not None]
        return [key for f in files for key in self._load(f)]

    def is_authorized(self, token: bytes, signature: bytes) -> bool:
        return any(verify_signature(key, token, signature) for key in self.keys())

    def accept(self, key: PublicKey) -> None:
        """Remember a key, as a person tapping "Always allow" on the phone's dialog does."""
        with self._lock:
            if any(k.modulus == key.modulus for k in self._load(self._accepted_file)):
                return
            self._accepted_file.parent.mkdir(parents=True, exist_ok=True)
            with self._accepted_file.open("a", encoding="ascii") as out:
                out.write(key.line + "\n")
            self._cache.pop(self._accepted_file, None)

    def _load(self, path: Path) -> list[PublicKey]:
        try:
            stat = path.stat()
        except OSError:
            return []
        cached = self._cache.get(path)
        if cached and cached[0] == stat.st_mtime and cached[1] == stat.st_size:
            return cached[2]
        keys = parse_keys_text(path.read_text(encoding="ascii", errors="replace"))
        self._cache[path] = (stat.st_mtime, stat.st_size, keys)
        return keys
