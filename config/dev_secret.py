"""The development SECRET_KEY: generated once and kept (0600) under the data dir, never in the repo.

Only settings.py calls this, and only when DEBUG is on; a deployment must set DJANGO_SECRET_KEY.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_dev_secret_key(path: Path) -> str:
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    # O_EXCL: if two processes start together, one writes and the other reads the winner's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip() or key
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
