"""Validators for the per-phone settings that end up inside ADB shell commands or queue names.

`agent_python` and `work_dir` are put into commands run on the phone (`<python> <work_dir>/agent.pyz ...`).
Callers still quote every word (shlex.quote), but the values are also restricted here to what a command
word or a path can reasonably be, so a mistake is caught when it is typed, with a clear message.
"""

from __future__ import annotations

import re
import shlex

from django.core.exceptions import ValidationError

_COMMAND_WORD = re.compile(r"^[A-Za-z0-9_./=+:@-]+$")
_PATH = re.compile(r"^/[A-Za-z0-9_./+@-]*$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def validate_agent_python(value: str) -> None:
    """One or more words (`python3`, `su -c /data/data/com.termux/files/usr/bin/python`), no shell syntax."""
    words = value.split()
    if not words:
        raise ValidationError("Give the command that runs Python on the phone, e.g. python3.")
    for word in words:
        if not _COMMAND_WORD.match(word):
            raise ValidationError(
                f"{word!r} is not allowed: words may contain only letters, digits and _ . / = + : @ -"
                " (no quotes, $, ;, |, & or other shell syntax)."
            )


def agent_python_argv(value: str) -> list[str]:
    """The words of a validated agent_python, each safe to pass through shlex.quote into a command."""
    validate_agent_python(value)
    return value.split()


def agent_python_command(value: str) -> str:
    """agent_python as a command prefix with every word quoted."""
    return " ".join(shlex.quote(word) for word in agent_python_argv(value))


def normalise_work_dir(value: str) -> str:
    """An absolute directory on the phone, written with one trailing slash."""
    text = value.strip()
    if not text.startswith("/"):
        raise ValidationError(
            "The work dir must be an absolute path on the phone, e.g. /data/local/tmp/fedfleet/."
        )
    if not _PATH.match(text):
        raise ValidationError("The work dir may contain only letters, digits and _ . / + @ -.")
    parts = [part for part in text.split("/") if part]
    if not parts:
        raise ValidationError("The work dir cannot be the root directory.")
    if any(part in (".", "..") for part in parts):
        raise ValidationError("The work dir must not contain '.' or '..' components.")
    return "/" + "/".join(parts) + "/"


def validate_work_dir(value: str) -> None:
    normalise_work_dir(value)


def validate_worker_queue(value: str) -> None:
    """Blank (the shared `devices` queue) or a queue name such as devices.lab-pc-2."""
    if value and not _QUEUE.match(value):
        raise ValidationError(
            "A queue name may contain only letters, digits and _ . - (e.g. devices.lab-pc-2)."
        )
    if value and not value.startswith("devices"):
        raise ValidationError("Per-host queues are named devices.<host>, e.g. devices.lab-pc-2.")


_AGENT_SECRET = re.compile(r"^[\x21-\x7e]{16,256}$")


def validate_agent_port(value: int) -> None:
    if not 0 < int(value) < 65536:
        raise ValidationError("The agent port must be between 1 and 65535.")


def validate_agent_secret(value: str) -> None:
    """The agent's own rule (training/agent/protocol.py secret_bytes): 16-256 printable ASCII characters
    without spaces (devices does not import training)."""
    if not _AGENT_SECRET.match(value):
        raise ValidationError("The agent secret must be 16-256 printable characters without spaces.")
