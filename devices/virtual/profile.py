"""What a virtual phone is: identity, hardware, battery, availability, faults and behaviour.

Profiles come from a JSON file (`--profiles`) or from a small built-in catalogue of real models:

    {"defaults": {"faults": {"bandwidth_bps": 20000000}},
     "phones": [{"model": "Pixel 7", "manufacturer": "Google", "speed_factor": 1.0,
                 "availability": {"kind": "markov", "mean_on_s": 300, "mean_off_s": 60}},
                {"model": "SM-A525F", "stock": true, "termux": {"installed": true, "agent_port": 7000}},
                ...]}

A bare list is accepted as "phones". With N phones and fewer entries, entries are reused in order and
each phone still gets its own serial. Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

AvailabilityKind = Literal["always", "markov", "diurnal", "alternating", "trace"]


class ProfileError(ValueError):
    """A profile file or entry that cannot be used, with the offending key in the message."""


@dataclass(frozen=True)
class BatteryProfile:
    level: float = 80.0  # percent at lab start
    plugged: bool = False  # on a charger (USB)
    charge_pct_per_min: float = 1.0
    drain_idle_pct_per_min: float = 0.02
    drain_train_pct_per_min: float = 0.5
    temperature_c: float = 28.0  # idle; training adds a few degrees
    voltage_mv: int = 4100
    technology: str = "Li-ion"


@dataclass(frozen=True)
class AvailabilityProfile:
    kind: AvailabilityKind = "always"
    # markov: exponential on/off durations with these means
    mean_on_s: float = 600.0
    mean_off_s: float = 120.0
    # diurnal: per slot, online with a probability that follows a day-shaped cosine
    period_s: float = 86400.0
    slot_s: float = 60.0
    min_online_p: float = 0.1
    max_online_p: float = 0.9
    peak_at: float = 0.875  # fraction of the period where the probability peaks (21:00)
    # alternating: online when floor(t / period_s) % n_groups == group
    group: int = 0
    n_groups: int = 2
    # trace: a file of "<seconds> on|off" lines; loop_s > 0 repeats it
    trace_file: str = ""
    loop_s: float = 0.0


@dataclass(frozen=True)
class FaultProfile:
    drop_transfer_p: float = 0.0  # per push/pull: drop the connection at a random byte
    drop_command_p: float = 0.0  # per shell command: drop within drop_command_window_s (or at its end)
    drop_command_window_s: float = 5.0
    stall_p: float = 0.0  # per transfer or command: freeze for stall_s once
    stall_s: float = 2.0
    bandwidth_bps: float = 0.0  # bytes per second each way, 0 = unlimited


@dataclass(frozen=True)
class TermuxProfile:
    """A Termux-like app on the phone. With an agent.pyz to install (LabConfig.agent_pyz), the lab acts
    as the person who runs `python agent.pyz serve --port <agent_port>` in Termux once: the app's agent
    listens on the phone's loopback and the platform reaches it over ADB's `tcp:` service (app mode)."""

    installed: bool = False
    agent_port: int = 7000
    agent_secret: str = ""  # the phone's agent secret; empty: the lab makes one up (PhoneEndpoint)
    autostart: bool = True  # start the app's agent with the lab (else VirtualPhone.start_app_agent)


@dataclass(frozen=True)
class PhoneProfile:
    serial: str = ""
    manufacturer: str = "Google"
    brand: str = "google"
    model: str = "Pixel 7"
    product: str = "panther"  # ro.product.name
    device: str = "panther"  # ro.product.device
    android_release: str = "14"
    sdk: int = 34
    abi: str = "arm64-v8a"
    ram_mb: int = 8192
    cores: int = 8
    storage_mb: int = 115000
    speed_factor: float = 1.0  # 2.0 = training takes twice as long as on the host
    python: str = "python3"  # the shell word that runs the agent
    # A stock, unrooted build: `adb shell` cannot run any python (as on a real phone, where the shell user
    # cannot enter an app's sandbox); the agent can only live in an app (termux).
    stock: bool = False
    behaviour: str = "honest"  # read by the agent on this phone (FEDFLEET_BEHAVIOUR)
    battery: BatteryProfile = field(default_factory=BatteryProfile)
    availability: AvailabilityProfile = field(default_factory=AvailabilityProfile)
    faults: FaultProfile = field(default_factory=FaultProfile)
    termux: TermuxProfile = field(default_factory=TermuxProfile)


def stock_android(**changes: Any) -> PhoneProfile:
    """A stock phone with Termux installed: the shell runs no python, the app runs the agent."""
    return dataclasses.replace(PhoneProfile(), stock=True, termux=TermuxProfile(installed=True), **changes)


CATALOGUE: tuple[dict[str, Any], ...] = (
    {"manufacturer": "Google", "brand": "google", "model": "Pixel 7", "product": "panther",
     "device": "panther", "android_release": "14", "sdk": 34, "ram_mb": 8192, "cores": 8,
     "speed_factor": 1.0},
    {"manufacturer": "samsung", "brand": "samsung", "model": "SM-A525F", "product": "a52qnsxx",
     "device": "a52q", "android_release": "13", "sdk": 33, "ram_mb": 6144, "cores": 8,
     "speed_factor": 1.6},
    {"manufacturer": "Xiaomi", "brand": "Redmi", "model": "M2101K7AG", "product": "mojito_global",
     "device": "mojito", "android_release": "12", "sdk": 31, "ram_mb": 4096, "cores": 8,
     "speed_factor": 2.2},
    {"manufacturer": "Google", "brand": "google", "model": "Pixel 4a", "product": "sunfish",
     "device": "sunfish", "android_release": "13", "sdk": 33, "ram_mb": 6144, "cores": 8,
     "speed_factor": 1.8},
    {"manufacturer": "OnePlus", "brand": "OnePlus", "model": "DN2103", "product": "DN2103EEA",
     "device": "OP515BL1", "android_release": "12", "sdk": 31, "ram_mb": 8192, "cores": 8,
     "speed_factor": 1.3},
    {"manufacturer": "motorola", "brand": "motorola", "model": "moto g(30)", "product": "caprip_retail",
     "device": "caprip", "android_release": "11", "sdk": 30, "ram_mb": 4096, "cores": 8,
     "speed_factor": 2.8, "abi": "arm64-v8a"},
)  # fmt: skip


def default_serial(index: int) -> str:
    return f"vphone-{index + 1:02d}"


def _build(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    """Instantiate a profile dataclass from JSON, checking names and basic types."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            values[name] = _build(hint, value, f"{where}.{name}")
        else:
            values[name] = _check_scalar(value, hint, f"{where}.{name}")
    return cls(**values)


def _check_scalar(value: Any, hint: Any, where: str) -> Any:
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ProfileError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: `true` must not pass for a count, nor 1 for a flag
    if not isinstance(value, hint) or isinstance(value, bool) != (hint is bool):
        raise ProfileError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_from_dict(data: dict[str, Any], where: str = "profile") -> PhoneProfile:
    profile: PhoneProfile = _build(PhoneProfile, data, where)
    _validate(profile, where)
    return profile


def _validate(profile: PhoneProfile, where: str) -> None:
    if profile.speed_factor <= 0:
        raise ProfileError(f"{where}.speed_factor must be > 0")
    if profile.cores < 1 or profile.ram_mb < 1:
        raise ProfileError(f"{where}: cores and ram_mb must be positive")
    if not profile.python or any(c.isspace() for c in profile.python):
        raise ProfileError(f"{where}.python must be one word")
    a = profile.availability
    if a.kind == "alternating" and not 0 <= a.group < a.n_groups:
        raise ProfileError(f"{where}.availability.group must be in [0, n_groups)")
    if a.kind == "trace" and not a.trace_file:
        raise ProfileError(f"{where}.availability.trace_file is required for kind 'trace'")
    termux = profile.termux
    if not 0 < termux.agent_port < 65536:
        raise ProfileError(f"{where}.termux.agent_port must be 1-65535")
    if termux.agent_secret and not _usable_secret(termux.agent_secret):
        raise ProfileError(f"{where}.termux.agent_secret must be 16-256 printable characters without spaces")
    for name in ("drop_transfer_p", "drop_command_p", "stall_p"):
        if not 0.0 <= getattr(profile.faults, name) <= 1.0:
            raise ProfileError(f"{where}.faults.{name} must be a probability")


def _usable_secret(secret: str) -> bool:
    """The agent's own rule (training/agent/protocol.py secret_bytes; devices/ does not import training)."""
    return 16 <= len(secret) <= 256 and all("!" <= c <= "~" for c in secret)


def build_profiles(count: int, entries: list[dict[str, Any]], defaults: dict[str, Any]) -> list[PhoneProfile]:
    """N profiles from entries (reused in order) over defaults; every phone gets a distinct serial."""
    if count < 1:
        raise ProfileError("at least one phone is needed")
    source = entries or [dict(entry) for entry in CATALOGUE]
    profiles = []
    seen: set[str] = set()
    for index in range(count):
        entry = _merge(defaults, source[index % len(source)])
        serial = entry.get("serial") or default_serial(index)
        if serial in seen:
            serial = f"{serial}-{index + 1}"
        seen.add(serial)
        entry["serial"] = serial
        profiles.append(profile_from_dict(entry, f"phones[{index % len(source)}]"))
    return profiles


def load_profiles(path: Path | None, count: int) -> list[PhoneProfile]:
    """Profiles for `count` phones from a JSON file, or from the built-in catalogue when path is None."""
    if path is None:
        return build_profiles(count, [], {})
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read profiles {path}: {exc}") from None
    if isinstance(document, list):
        document = {"phones": document}
    if not isinstance(document, dict) or not isinstance(document.get("phones", []), list):
        raise ProfileError(f"{path}: expected a list or an object with a 'phones' list")
    unknown = set(document) - {"defaults", "phones"}
    if unknown:
        raise ProfileError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ProfileError(f"{path}: 'defaults' must be an object")
    trace_base = Path(path).parent
    entries = [_resolve_trace(e, trace_base) for e in document.get("phones", [])]
    return build_profiles(count, entries, _resolve_trace(defaults, trace_base))


def _resolve_trace(entry: Any, base: Path) -> Any:
    """Trace files are named relative to the profiles file."""
    if not isinstance(entry, dict):
        return entry
    availability = entry.get("availability")
    if isinstance(availability, dict) and availability.get("trace_file"):
        resolved = dict(availability, trace_file=str(base / availability["trace_file"]))
        return dict(entry, availability=resolved)
    return entry
