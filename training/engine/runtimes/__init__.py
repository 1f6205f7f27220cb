"""Client runtimes: how one client's part of a round runs (base.py is the seam, one module per runtime).

    exec_shell.ExecRuntime       ADB shell runs agent.pyz once per round step (rooted phones, boards,
                                 virtual phones)
    resident.ResidentRuntime     the platform keeps `agent.pyz serve` running through the shell and talks
                                 to it over ADB's tcp: stream (agent_stream.py)
    app.AppRuntime               a person started `agent.pyz serve` in Termux (stock phones); the platform
                                 only opens tcp: streams, checks the agent's hash and upgrades it

`runtime_for(device)` is the engine's only way to reach a client; the phone's `runtime` field picks.
"""

from __future__ import annotations

from devices.models import Device, Runtime
from training.engine.runtimes.app import AppRuntime
from training.engine.runtimes.base import ClientRuntime
from training.engine.runtimes.exec_shell import ExecRuntime
from training.engine.runtimes.resident import ResidentRuntime

_RUNTIMES: dict[str, ClientRuntime] = {
    Runtime.EXEC: ExecRuntime(),
    Runtime.RESIDENT: ResidentRuntime(),
    Runtime.APP: AppRuntime(),
}


def runtime_for(device: Device) -> ClientRuntime:
    """The runtime this phone is registered with (exec for anything unknown: today's behaviour)."""
    return _RUNTIMES.get(device.runtime, _RUNTIMES[Runtime.EXEC])
