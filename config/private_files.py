"""The data dir and the SQLite database are private to the account that runs the platform.

FEDFLEET_DATA_DIR holds the ADB private key, the development secret key, job checkpoints and (by
default) the database with every password hash and API token: nobody else on the machine may list or
read it. The directory is made 0700 and the database file 0600 before SQLite first opens it (SQLite gives
its -wal and -shm files the database file's mode). A directory or file that already exists with looser
modes — an install older than this rule — is tightened, if it is ours; one owned by another account
(e.g. a mounted volume) is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with the last component 0700; tighten it if ours and looser."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def ensure_private_file(path: Path) -> Path:
    """Create `path` empty with 0600 unless it exists (an empty file is a valid empty SQLite database);
    tighten it if ours and looser. Missing parents are created; existing ones keep their modes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    _tighten(path, PRIVATE_FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & ~mode == 0:
        return
    os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
