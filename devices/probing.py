"""One health probe: connect to a phone over ADB, read its telemetry, and say what state it is in.

Only fixed commands are sent (the property names are constants, quoted anyway). A phone that rejects our
key is *unauthorized*, one that cannot be reached or stops answering is *offline*; a command the phone
does not know only leaves that piece of telemetry empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices import adb
from devices.models import DeviceStatus
from devices.telemetry import (
    AVAILABILITY_PROPERTY,
    Telemetry,
    device_properties,
    parse_cpu_list,
    parse_dumpsys_battery,
    parse_meminfo,
)

PROPERTY_KEYS = (
    "ro.product.manufacturer",
    "ro.product.model",
    "ro.build.version.release",
    "ro.build.version.sdk",
    "ro.product.cpu.abi",
    AVAILABILITY_PROPERTY,
)
BATTERY_COMMAND = "dumpsys battery"
MEMINFO_COMMAND = "cat /proc/meminfo"
CPU_COMMAND = "cat /sys/devices/system/cpu/possible"


@dataclass(frozen=True)
class ProbeOutcome:
    status: str  # DeviceStatus value: online, unauthorized or offline
    reason: str
    telemetry: Telemetry | None


def _output_or_empty(conn: adb.AdbConnection, command: str, *, timeout_s: float) -> str:
    """A command's output, or "" when the phone ran it and it failed (unknown command, missing file)."""
    try:
        return conn.run(command, timeout_s=timeout_s)
    except adb.CommandFailed:
        return ""


def collect_telemetry(conn: adb.AdbConnection, *, timeout_s: float = 5.0) -> Telemetry:
    values = {
        key: _output_or_empty(conn, f"getprop {adb.quote(key)}", timeout_s=timeout_s) for key in PROPERTY_KEYS
    }
    return Telemetry(
        properties=device_properties(values),
        battery=parse_dumpsys_battery(_output_or_empty(conn, BATTERY_COMMAND, timeout_s=timeout_s)),
        memory=parse_meminfo(_output_or_empty(conn, MEMINFO_COMMAND, timeout_s=timeout_s)),
        cpu_cores=parse_cpu_list(_output_or_empty(conn, CPU_COMMAND, timeout_s=timeout_s)),
    )


def probe(
    target: adb.Target, *, connect_timeout_s: float = 5.0, command_timeout_s: float = 5.0
) -> ProbeOutcome:
    try:
        with adb.connect(target, timeout_s=connect_timeout_s) as conn:
            telemetry = collect_telemetry(conn, timeout_s=command_timeout_s)
    except adb.DeviceUnauthorized as exc:
        return ProbeOutcome(
            DeviceStatus.UNAUTHORIZED, _message(exc, "the phone has not accepted our ADB key"), None
        )
    except adb.AdbError as exc:
        return ProbeOutcome(DeviceStatus.OFFLINE, _message(exc, "no answer"), None)
    except OSError as exc:  # belt and braces: the seam maps these, but a probe must never crash on one
        return ProbeOutcome(DeviceStatus.OFFLINE, str(exc) or type(exc).__name__, None)
    return ProbeOutcome(DeviceStatus.ONLINE, "", telemetry)


def probe_address(
    transport: str, address: str, *, connect_timeout_s: float = 5.0, command_timeout_s: float = 5.0
) -> ProbeOutcome:
    """probe() for a stored transport/address; an address the ADB seam refuses counts as offline."""
    try:
        target = adb.Target(transport=transport, address=address)  # type: ignore[arg-type]
    except ValueError as exc:
        return ProbeOutcome(DeviceStatus.OFFLINE, f"invalid address: {exc}"[:300], None)
    return probe(target, connect_timeout_s=connect_timeout_s, command_timeout_s=command_timeout_s)


def _message(exc: Exception, fallback: str) -> str:
    text = getattr(exc, "message", "") or str(exc)
    return (text or fallback)[:300]
