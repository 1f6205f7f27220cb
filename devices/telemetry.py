"""Pure parsers for what a phone prints: `getprop`, `dumpsys battery`, `/proc/meminfo`, CPU lists.

Everything a phone sends is untrusted text: a broken build, a hostile phone or a shell error message
("/system/bin/sh: getprop: inaccessible or not found") must never turn into a bogus value, an exception
or a 10 MB string in the database. So each parser accepts any string, returns None (or "") for what it
cannot read with confidence, bounds every number to a plausible range, and strips control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TEXT_LENGTH = 100
MAX_SCAN_CHARS = 64 * 1024  # real outputs are a few KB; never scan more than this

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHELL_ERROR = re.compile(r"(not found|no such file|permission denied|inaccessible|^/system/bin/sh:)", re.I)
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _-]{0,40}?)\s*:\s*(.*?)\s*$")
_GETPROP_LINE = re.compile(r"^\[([^\]]{1,200})\]:\s*\[(.*)\]\s*$")
_MEMINFO_LINE = re.compile(r"^([A-Za-z()_0-9]+):\s+(\d{1,15})\s*(kB)?\s*$")
_CPU_RANGE = re.compile(r"^(\d{1,4})(?:-(\d{1,4}))?$")

# Not an Android property: a virtual phone answers it with its availability model ("alternating: group 1
# of 2, period 30 s"); real phones print nothing. devices/virtual/scenarios.py defines the same name.
AVAILABILITY_PROPERTY = "fedfleet.availability"

BATTERY_STATUS_CHARGING = 2
BATTERY_STATUS_DISCHARGING = 3
BATTERY_STATUS_NOT_CHARGING = 4
BATTERY_STATUS_FULL = 5


@dataclass(frozen=True)
class DeviceProperties:
    manufacturer: str = ""
    model: str = ""
    android_release: str = ""
    sdk_int: int | None = None
    abi: str = ""
    availability_model: str = ""  # what drives a virtual phone's availability; "" on real phones


@dataclass(frozen=True)
class BatteryState:
    level_percent: int | None
    charging: bool | None
    plugged: str  # "ac", "usb", "wireless", "" (unplugged or unknown)
    temperature_c: float | None
    voltage_mv: int | None


@dataclass(frozen=True)
class MemoryInfo:
    total_kb: int
    available_kb: int | None

    @property
    def total_mb(self) -> int:
        return self.total_kb // 1024

    @property
    def available_mb(self) -> int | None:
        return None if self.available_kb is None else self.available_kb // 1024


@dataclass(frozen=True)
class Telemetry:
    """Everything one probe learned; any part may be missing."""

    properties: DeviceProperties
    battery: BatteryState | None
    memory: MemoryInfo | None
    cpu_cores: int | None


def clean_text(raw: str, *, max_length: int = MAX_TEXT_LENGTH) -> str:
    """One line of printable text: control characters removed, blanks squeezed, length capped."""
    first_line = raw[:MAX_SCAN_CHARS].strip().splitlines()[0] if raw.strip() else ""
    squeezed = " ".join(_CONTROL.sub(" ", first_line).split())
    return squeezed[:max_length]


def parse_getprop_value(output: str) -> str:
    """The value printed by `getprop KEY` ("" when unset or when the output is an error message)."""
    if len(output.strip().splitlines()) > 1:
        return ""  # a property value is one line; several lines means something else answered
    value = clean_text(output)
    if _SHELL_ERROR.search(value):
        return ""
    return value


def parse_getprop_listing(output: str) -> dict[str, str]:
    """`getprop` without arguments: `[key]: [value]` lines; other lines are ignored."""
    props: dict[str, str] = {}
    for line in output[:MAX_SCAN_CHARS].splitlines():
        match = _GETPROP_LINE.match(line.strip())
        if match:
            props[match.group(1)] = clean_text(match.group(2))
    return props


def parse_sdk_int(text: str) -> int | None:
    value = text.strip()
    if not value.isdigit() or len(value) > 3:
        return None
    sdk = int(value)
    return sdk if 1 <= sdk <= 200 else None


def parse_android_release(text: str) -> str:
    """ro.build.version.release: "14", "8.1.0", "R" (previews) -- short and made of version characters."""
    value = parse_getprop_value(text)
    return value if re.fullmatch(r"[0-9A-Za-z._-]{1,16}", value) else ""


def parse_abi(text: str) -> str:
    value = parse_getprop_value(text)
    return value if re.fullmatch(r"[a-z0-9_-]{1,32}", value) else ""


def device_properties(values: dict[str, str]) -> DeviceProperties:
    """Build DeviceProperties from raw `getprop KEY` outputs keyed by property name."""
    return DeviceProperties(
        manufacturer=parse_getprop_value(values.get("ro.product.manufacturer", "")),
        model=parse_getprop_value(values.get("ro.product.model", "")),
        android_release=parse_android_release(values.get("ro.build.version.release", "")),
        sdk_int=parse_sdk_int(values.get("ro.build.version.sdk", "")),
        abi=parse_abi(values.get("ro.product.cpu.abi", "")),
        availability_model=parse_getprop_value(values.get(AVAILABILITY_PROPERTY, "")),
    )


def _int_or_none(text: str, *, low: int, high: int) -> int | None:
    value = text.strip()
    if not re.fullmatch(r"-?\d{1,9}", value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def _bool_or_none(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def parse_dumpsys_battery(output: str) -> BatteryState | None:
    """`dumpsys battery`: `  key: value` lines under "Current Battery Service state:".

    Returns None unless the output has a usable level. `level` is out of `scale` (100 on every phone
    seen, but it is read, not assumed); temperature is in tenths of a degree Celsius; status 2 means
    charging and 5 full.
    """
    fields: dict[str, str] = {}
    for line in output[:MAX_SCAN_CHARS].splitlines():
        match = _KEY_VALUE.match(line)
        if match:
            fields.setdefault(match.group(1).strip().lower(), match.group(2))
    level = _int_or_none(fields.get("level", ""), low=0, high=10_000)
    scale = _int_or_none(fields.get("scale", "100"), low=1, high=10_000) or 100
    if level is None or level > scale:
        return None
    plugged = ""
    for source in ("ac", "usb", "wireless"):
        if _bool_or_none(fields.get(f"{source} powered", "")):
            plugged = source
            break
    status = _int_or_none(fields.get("status", ""), low=1, high=5)
    charging: bool | None
    if status == BATTERY_STATUS_CHARGING:
        charging = True
    elif status in (BATTERY_STATUS_DISCHARGING, BATTERY_STATUS_NOT_CHARGING):
        charging = False
    elif status == BATTERY_STATUS_FULL:
        charging = bool(plugged)
    else:
        charging = bool(plugged) if any(f"{s} powered" in fields for s in ("ac", "usb")) else None
    tenths = _int_or_none(fields.get("temperature", ""), low=-400, high=1200)
    return BatteryState(
        level_percent=round(level * 100 / scale),
        charging=charging,
        plugged=plugged,
        temperature_c=None if tenths is None else tenths / 10,
        voltage_mv=_int_or_none(fields.get("voltage", ""), low=1, high=20_000),
    )


def parse_meminfo(output: str) -> MemoryInfo | None:
    """`/proc/meminfo`: MemTotal and MemAvailable (or MemFree + Buffers + Cached on old kernels), in kB."""
    values: dict[str, int] = {}
    for line in output[:MAX_SCAN_CHARS].splitlines():
        match = _MEMINFO_LINE.match(line.strip())
        if match:
            values.setdefault(match.group(1), int(match.group(2)))
    total = values.get("MemTotal")
    # 1 TiB in kB: no phone has more; anything larger is garbage.
    if total is None or not 0 < total <= 1 << 30:
        return None
    available = values.get("MemAvailable")
    if available is None and "MemFree" in values:
        available = values["MemFree"] + values.get("Buffers", 0) + values.get("Cached", 0)
    if available is not None and not 0 <= available <= total:
        available = None
    return MemoryInfo(total_kb=total, available_kb=available)


def parse_cpu_list(output: str) -> int | None:
    """Number of CPUs in a kernel CPU list such as `/sys/devices/system/cpu/possible`: "0-7", "0-3,6-7"."""
    text = output.strip()
    if not text or "\n" in text or len(text) > 200:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        match = _CPU_RANGE.match(part.strip())
        if not match:
            return None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first or last >= 1024:
            return None
        cpus.update(range(first, last + 1))
    return len(cpus)
