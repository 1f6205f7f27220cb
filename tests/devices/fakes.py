"""A fake of the ADB seam (devices.adb.connect) for unit tests: canned command outputs, real error types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from devices import adb

PIXEL_OUTPUTS = {
    "getprop ro.product.manufacturer": "Google\n",
    "getprop ro.product.model": "Pixel 6\n",
    "getprop ro.build.version.release": "14\n",
    "getprop ro.build.version.sdk": "34\n",
    "getprop ro.product.cpu.abi": "arm64-v8a\n",
    "dumpsys battery": "Current Battery Service state:\n  AC powered: true\n  status: 2\n  level: 64\n  scale: 100\n"
    "  temperature: 301\n",
    "cat /proc/meminfo": "MemTotal:        7801405 kB\nMemAvailable:    3510632 kB\n",
    "cat /sys/devices/system/cpu/possible": "0-7\n",
}


@dataclass
class FakePhone:
    outputs: dict[str, str] = field(default_factory=lambda: dict(PIXEL_OUTPUTS))
    connect_error: Exception | None = None
    commands: list[str] = field(default_factory=list)
    connects: int = 0


class FakeConnection:
    def __init__(self, phone: FakePhone) -> None:
        self.phone = phone

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def run(self, command: str, *, timeout_s: float = 30.0) -> str:
        self.phone.commands.append(command)
        key = command
        if key not in self.phone.outputs:
            raise adb.CommandFailed(f"{command!r} exited with 127", exit_code=127, output="not found")
        return self.phone.outputs[key]

    shell = run


def install_fake_phones(monkeypatch: pytest.MonkeyPatch, phones: dict[str, FakePhone]) -> None:
    """Route adb.connect(Target(..., address)) to phones[address]; unknown addresses are offline."""

    def connect(target: adb.Target, *, timeout_s: float = 5.0, **kwargs: Any) -> FakeConnection:
        phone = phones.get(target.address)
        if phone is None:
            raise adb.DeviceOffline(f"connect on {target.address}: [Errno 111] Connection refused")
        phone.connects += 1
        if phone.connect_error is not None:
            raise phone.connect_error
        return FakeConnection(phone)

    monkeypatch.setattr(adb, "connect", connect)
