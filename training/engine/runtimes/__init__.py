"""Client runtimes: how one client's part of a round runs (base.py is the seam, one module per runtime).

    exec_shell.ExecRuntime   ADB shell runs agent.pyz once per round step (today's every phone)

`runtime_for(device)` is the engine's only way to reach a client.
"""

from __future__ import annotations

from devices.models import Device
from training.engine.runtimes.base import ClientRuntime
from training.engine.runtimes.exec_shell import ExecRuntime

_EXEC = ExecRuntime()


def runtime_for(device: Device) -> ClientRuntime:
    """The runtime that serves this phone (one today: every phone runs the agent per round over ADB)."""
    return _EXEC
