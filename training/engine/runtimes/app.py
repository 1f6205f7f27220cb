"""The `app` runtime: stock phones, where `adb shell` cannot run any Python. A person starts the agent
once in Termux (the fleet page shows the one-line command with this phone's secret, and how to keep it
alive through sleep); the platform only opens `tcp:` streams to it, checks its hash and upgrades it over
the stream (agent_stream.py). Nothing here starts an agent: a phone whose agent is gone says so.
The command itself is devices.services.termux_command (the fleet page shows it).
"""

from __future__ import annotations

import contextlib

from devices import adb
from devices import services as device_services
from devices.models import Device, DeviceStatus
from devices.services import termux_command  # noqa: F401 - the command this runtime relies on
from training.agent import protocol
from training.engine.runtimes.agent_stream import (
    NOT_RUNNING,
    UPGRADING,
    WRONG_SECRET,
    AgentRefusedSecret,
    AgentStreamRuntime,
    open_agent,
    up_to_date,
)
from training.engine.runtimes.base import ClientError, ClientOffline
from training.engine.runtimes.exec_shell import agent_build, push_if_changed, remote_sha256
from training.jobs import storage


def mark_wrong_secret(device: Device) -> None:
    """The fleet page says why this phone cannot train (not just "failed"); a probe that reaches the
    agent with the right secret again brings it back."""
    device_services.set_status(
        device.pk, DeviceStatus.UNAUTHORIZED, reason=f"{WRONG_SECRET}: the phone's agent refused it"
    )


class AppRuntime(AgentStreamRuntime):
    name = "app"

    def reach(self, conn: adb.AdbConnection, device: Device) -> protocol.AgentClient:
        try:
            client = open_agent(conn, device)
        except adb.StreamRefused as exc:
            place_agent(conn, device)
            raise ClientOffline(f"{NOT_RUNNING}: start it in Termux (the fleet page shows how)") from exc
        except AgentRefusedSecret:
            mark_wrong_secret(device)
            raise
        return up_to_date(conn, device, client)


def place_agent(conn: adb.AdbConnection, device: Device) -> None:
    """Put the current agent.pyz where the person's Termux command runs it (the work dir is on shared
    storage, which the shell user can write even on a stock phone), so that command just works."""
    agent = storage.phone_agent_path(device.work_dir)
    build = agent_build()
    current = remote_sha256(conn, [agent], make_dirs=[device.work_dir])
    push_if_changed(conn, build.path, agent, build.sha256, current)


def probe_agent(conn: adb.AdbConnection, device: Device) -> tuple[str, str] | None:
    """The health probe's question to an app-mode phone (devices.extensions agent check): is its agent
    there, does it know the secret, is it current? None: ready (the phone is online)."""
    try:
        client = open_agent(conn, device)
    except adb.StreamRefused:
        return DeviceStatus.OFFLINE, f"{NOT_RUNNING}: start it in Termux (the fleet page shows how)"
    except AgentRefusedSecret:
        return DeviceStatus.UNAUTHORIZED, f"{WRONG_SECRET}: the phone's agent refused it"
    except ClientError as exc:
        return DeviceStatus.OFFLINE, f"agent not answering: {exc.reason()}"
    with client:
        running = client.hello_info.sha256 if client.hello_info is not None else None
        with contextlib.suppress(protocol.AgentClientError):
            client.bye()
    if running is not None and running != agent_build().sha256:
        return DeviceStatus.ONLINE, f"{UPGRADING} with its next round"
    return None
