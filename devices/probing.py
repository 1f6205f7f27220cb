"""One health probe: connect to a phone over ADB, read its telemetry, and say what state it is in.

Only fixed commands are sent (the property names are constants, quoted anyway). A phone that rejects our
key is *unauthorized*, one that cannot be reached or stops answering is *offline*; a command the phone
does not know only leaves that piece of telemetry empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices import adb
from devices.models import Device, DeviceStatus, Runtime
from devices.telemetry import (
    AVAILABILITY_PROPERTY,
    Telemetry,
    device_properties,
    parse_cpu_list,
    parse_dumpsys_battery,
    parse_meminfo,
)
from devices.validators import agent_python_command

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
PACKAGES_COMMAND = "pm list packages"
TERMUX_PACKAGE = "com.termux"


@dataclass(frozen=True)
class ProbeOutcome:
    status: str  # DeviceStatus value: online, unauthorized or offline
    reason: str
    telemetry: Telemetry | None
    runtime: str = ""  # detect_runtime's answer, when asked for (the register page's "Test connection")


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


def detect_runtime(conn: adb.AdbConnection, *, agent_python: str = "python3", timeout_s: float = 5.0) -> str:
    """How this phone can run the agent: `app` when its shell runs no Python but Termux is installed (a
    stock phone: the agent lives in the app), else `exec` (the shell runs Python; `resident` is the
    operator's choice for such phones)."""
    try:
        conn.run(f"{agent_python_command(agent_python)} --version", timeout_s=timeout_s)
    except adb.CommandFailed:
        packages = _output_or_empty(conn, PACKAGES_COMMAND, timeout_s=timeout_s)
        if f"package:{TERMUX_PACKAGE}" in packages.split():
            return Runtime.APP
    return Runtime.EXEC


def probe(
    target: adb.Target,
    *,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float = 5.0,
    device: Device | None = None,
    detect: bool = False,
) -> ProbeOutcome:
    """Connect, read telemetry, and say what state the phone is in. With `device`, a phone in the app
    runtime is also asked about its agent (devices.extensions agent checks); `detect` adds the runtime
    the phone can run (detect_runtime)."""
    verdict: tuple[str, str] | None = None
    runtime = ""
    try:
        with adb.connect(target, timeout_s=connect_timeout_s) as conn:
            telemetry = collect_telemetry(conn, timeout_s=command_timeout_s)
            if detect:
                runtime = detect_runtime(conn, timeout_s=command_timeout_s)
            if device is not None and device.runtime == Runtime.APP:
                from devices.extensions import check_agent  # noqa: PLC0415 - extensions import adb too

                verdict = check_agent(conn, device)
    except adb.DeviceUnauthorized as exc:
        return ProbeOutcome(
            DeviceStatus.UNAUTHORIZED, _message(exc, "the phone has not accepted our ADB key"), None
        )
    except adb.AdbError as exc:
        return ProbeOutcome(DeviceStatus.OFFLINE, _message(exc, "no answer"), None)
    except OSError as exc:  # belt and braces: the seam maps these, but a probe must never crash on one
        return ProbeOutcome(DeviceStatus.OFFLINE, str(exc) or type(exc).__name__, None)
    if verdict is not None:
        return ProbeOutcome(verdict[0], verdict[1][:300], telemetry, runtime)
    return ProbeOutcome(DeviceStatus.ONLINE, "", telemetry, runtime)


def probe_address(
    transport: str,
    address: str,
    *,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float = 5.0,
    device: Device | None = None,
    detect: bool = False,
) -> ProbeOutcome:
    """probe() for a stored transport/address; an address the ADB seam refuses counts as offline."""
    try:
        target = adb.Target(transport=transport, address=address)  # type: ignore[arg-type]
    except ValueError as exc:
        return ProbeOutcome(DeviceStatus.OFFLINE, f"invalid address: {exc}"[:300], None)
    return probe(
        target,
        connect_timeout_s=connect_timeout_s,
        command_timeout_s=command_timeout_s,
        device=device,
        detect=detect,
    )


def _message(exc: Exception, fallback: str) -> str:
    text = getattr(exc, "message", "") or str(exc)
    return (text or fallback)[:300]
