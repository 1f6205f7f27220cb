"""The platform's ADB identity: one RSA-2048 key pair, created on first use under the data directory.

The private key never goes into the database or the repository: it lives in `<data dir>/adb/adbkey`
(mode 0600, directory 0700) with its public half beside it in `adbkey.pub`, in the one-line `adb_keys`
format a phone stores ("base64(524-byte key struct) comment").

Fingerprints (what the UI shows so a person can match the phone's "Allow USB debugging?" dialog):
- `fingerprint_md5` is what Android's dialog displays: MD5 over the *decoded* 524-byte key struct, as
  upper-case hex pairs joined by ':' (frameworks `AdbDebuggingManager.getFingerprints`).
- `fingerprint_sha256` is the same struct's SHA-256 in the same notation, for places that want a stronger
  digest; phones do not show it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from adb_shell.auth.keygen import keygen, write_public_keyfile

KEY_FILENAME = "adbkey"


@dataclass(frozen=True)
class AdbIdentity:
    private_key_path: Path
    public_key: str  # one adb_keys line: "base64 comment"
    fingerprint_md5: str  # what the phone's dialog shows, e.g. "4E:1A:..."
    fingerprint_sha256: str

    @property
    def public_key_path(self) -> Path:
        return self.private_key_path.with_name(self.private_key_path.name + ".pub")


def fingerprint(public_key_line: str, algorithm: str = "md5") -> str:
    """Hex-colon digest of the decoded key struct (the base64 field of an adb_keys line)."""
    blob = base64.b64decode(public_key_line.split()[0])
    digest = hashlib.new(algorithm, blob, usedforsecurity=False).digest()
    return ":".join(f"{byte:02X}" for byte in digest)


def load_or_create_identity(key_path: Path) -> AdbIdentity:
    """Load the key pair at `key_path` (+ `.pub`), creating it (and its directory) if missing.

    Creation holds an exclusive lock so that two processes starting at once (web server and worker)
    do not each write half of a pair.
    """
    key_path = Path(key_path)
    directory = key_path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with open(directory / f".{key_path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key_path.exists():
            _create_key_pair(key_path)
        public_path = key_path.with_name(key_path.name + ".pub")
        if not public_path.exists():
            write_public_keyfile(str(key_path), str(public_path))
        os.chmod(key_path, 0o600)
        os.chmod(public_path, 0o644)
    public_key = public_path.read_text(encoding="ascii").strip()
    return AdbIdentity(
        private_key_path=key_path,
        public_key=public_key,
        fingerprint_md5=fingerprint(public_key, "md5"),
        fingerprint_sha256=fingerprint(public_key, "sha256"),
    )


def _create_key_pair(key_path: Path) -> None:
    # keygen writes with the default umask; the temporary name lives in our 0700 directory and is
    # chmod-ed before it takes the real name, so the key is never readable by others.
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.tmp")
    keygen(str(tmp))
    os.chmod(tmp, 0o600)
    os.replace(tmp.with_name(tmp.name + ".pub"), key_path.with_name(key_path.name + ".pub"))
    os.replace(tmp, key_path)


def data_dir() -> Path:
    """settings.FEDFLEET_DATA_DIR when Django is configured, else $FEDFLEET_DATA_DIR, else <repo>/var."""
    try:
        from django.conf import settings

        if settings.configured:
            return Path(settings.FEDFLEET_DATA_DIR)
    except ImportError:  # pragma: no cover - Django is a requirement, but the identity does not need it
        pass
    env = os.environ.get("FEDFLEET_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var"


def platform_key_path() -> Path:
    return data_dir() / "adb" / KEY_FILENAME


def platform_identity() -> AdbIdentity:
    return load_or_create_identity(platform_key_path())
