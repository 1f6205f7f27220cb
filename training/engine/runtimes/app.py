"""The `app` runtime: stock phones, where `adb shell` cannot run any Python. A person starts the agent
once in Termux (the fleet page shows the one-line command with this phone's secret, and how to keep it
alive through sleep); the platform only opens `tcp:` streams to it, checks its hash and upgrades it over
the stream (agent_stream.py). Nothing here starts an agent: a phone whose agent is gone says so.
"""

from __future__ import annotations

import contextlib
import shlex

from devices import adb
from devices import services as device_services
from devices.models import Device, DeviceStatus
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
from training.engine.runtimes.exec_shell import agent_build

SECRET_FILE = "~/.fedfleet-agent-secret"  # noqa: S105 - a file name, in Termux's home


def termux_command(device: Device) -> str:
    """The line a person types in Termux to start this phone's agent (secret included: it is shown to
    operators only). The secret goes into a 0600 file in Termux's home, never onto the agent's command
    line, and agent.pyz runs from the phone's work dir on shared storage (the platform's ADB can reach it)."""
    work_dir = device.work_dir.rstrip("/") or "/"
    return (
        f"umask 077 && echo {shlex.quote(device.agent_secret)} > {SECRET_FILE} && "
        f"termux-wake-lock; cd {shlex.quote(work_dir)} && "
        f"python agent.pyz serve --port {int(device.agent_port)} --secret-file {SECRET_FILE}"
    )


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
            raise ClientOffline(f"{NOT_RUNNING}: start it in Termux (the fleet page shows how)") from exc
        except AgentRefusedSecret:
            mark_wrong_secret(device)
            raise
        return up_to_date(conn, device, client)


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
