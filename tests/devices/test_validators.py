from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from devices.validators import (
    agent_python_command,
    normalise_work_dir,
    validate_agent_python,
    validate_worker_queue,
)


@pytest.mark.parametrize(
    "value", ["python3", "su -c /data/data/com.termux/files/usr/bin/python", "/usr/bin/env python3"]
)
def test_agent_python_accepts_commands(value: str) -> None:
    validate_agent_python(value)


@pytest.mark.parametrize(
    "value", ["", "   ", "python3; reboot", "python$HOME", "py'thon", "python3 && id", "python3 | sh"]
)
def test_agent_python_refuses_shell_syntax(value: str) -> None:
    with pytest.raises(ValidationError):
        validate_agent_python(value)


def test_agent_python_command_quotes_words() -> None:
    assert agent_python_command("su -c /data/python") == "su -c /data/python"


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("/data/local/tmp/fedfleet", "/data/local/tmp/fedfleet/"), ("/sdcard//fedfleet/", "/sdcard/fedfleet/")],
)
def test_work_dir_normalised(raw: str, normalised: str) -> None:
    assert normalise_work_dir(raw) == normalised


@pytest.mark.parametrize(
    "raw", ["relative/dir", "/", "/data/../etc", "/data/local/tmp/a b", "/tmp/$(id)", "/tmp/./x"]
)
def test_work_dir_refused(raw: str) -> None:
    with pytest.raises(ValidationError):
        normalise_work_dir(raw)


def test_worker_queue() -> None:
    validate_worker_queue("")
    validate_worker_queue("devices.lab-pc-2")
    for bad in ["training", "devices lab", "devices;x"]:
        with pytest.raises(ValidationError):
            validate_worker_queue(bad)
