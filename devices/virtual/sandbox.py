"""A phone's file system, confined to one host directory.

Phone paths map into the sandbox: `/data/local/tmp/x` -> `<root>/data/local/tmp/x`. Only the shell user's
writable places exist (`/data/local/tmp`, `/sdcard`, with `/storage/emulated/0` as an alias of `/sdcard`);
their parents (`/`, `/data`, ...) can be listed but not changed; everything else is "Permission denied".
A path that leaves these places through `..` or through a symlink pointing outside the sandbox is refused
the same way, so no phone command can touch a host file outside its own directory.
"""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path

WRITABLE_ROOTS = ("/data/local/tmp", "/sdcard")
ALIASES = {"/storage/emulated/0": "/sdcard", "/storage/self/primary": "/sdcard", "/mnt/sdcard": "/sdcard"}


class SandboxError(OSError):
    """An OSError with Android's wording, e.g. `Permission denied`."""

    def __init__(self, code: int, phone_path: str) -> None:
        super().__init__(code, os.strerror(code), phone_path)
        self.phone_path = phone_path

    def message(self, program: str) -> str:
        return f"{program}: {self.phone_path}: {self.strerror}"


def normalize(phone_path: str, cwd: str = "/") -> str:
    """The absolute, lexically normalised phone path (`..` resolved, aliases applied)."""
    joined = posixpath.normpath(posixpath.join(cwd, phone_path))
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")
    for alias, target in ALIASES.items():
        if joined == alias or joined.startswith(alias + "/"):
            return target + joined[len(alias) :]
    return joined


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def create_layout(self) -> None:
        for phone_dir in WRITABLE_ROOTS:
            self._host(phone_dir).mkdir(parents=True, exist_ok=True)

    def _host(self, normalized: str) -> Path:
        return self.root / normalized.lstrip("/")

    def is_writable_path(self, normalized: str) -> bool:
        return any(_under(normalized, root) for root in WRITABLE_ROOTS)

    def resolve(self, phone_path: str, cwd: str = "/", *, write: bool = False) -> Path:
        """Host path for a phone path, or SandboxError(EACCES) when it is outside the phone's reach.

        `write` also refuses the read-only parents of the writable places (and the writable roots
        themselves may not be removed; callers check that with `is_root`).
        """
        if "\0" in phone_path:
            raise SandboxError(errno.EINVAL, phone_path)
        normalized = normalize(phone_path, cwd)
        writable = self.is_writable_path(normalized)
        is_parent = any(_under(root, normalized) for root in WRITABLE_ROOTS)
        if not writable and (write or not is_parent):
            raise SandboxError(errno.EACCES, phone_path)
        host = self._host(normalized)
        if not self._inside(host):
            raise SandboxError(errno.EACCES, phone_path)
        return host

    def is_root(self, phone_path: str, cwd: str = "/") -> bool:
        """True for the writable roots themselves and their parents (which `rm -rf` must not delete)."""
        normalized = normalize(phone_path, cwd)
        return any(_under(root, normalized) for root in WRITABLE_ROOTS)

    def _inside(self, host: Path) -> bool:
        # realpath follows every symlink on the way; a link out of the sandbox lands outside root.
        real = os.path.realpath(host)
        return real == str(self.root) or real.startswith(str(self.root) + os.sep)

    def phone_path_of(self, host: Path) -> str:
        return "/" + str(Path(host).resolve().relative_to(self.root)).replace(os.sep, "/").lstrip(".")

    def map_argument(self, arg: str, cwd: str) -> str:
        """Host path for a phone absolute path given on a command line (left as is otherwise)."""
        if not arg.startswith("/"):
            return arg
        try:
            return str(self.resolve(arg, cwd))
        except SandboxError:
            return arg
