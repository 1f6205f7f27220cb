"""Telemetry parsers on real-format phone output, and on garbage (which must never raise or invent values)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.telemetry import (
    device_properties,
    parse_cpu_list,
    parse_dumpsys_battery,
    parse_getprop_listing,
    parse_getprop_value,
    parse_meminfo,
    parse_sdk_int,
)

# `adb shell dumpsys battery` on a Pixel 6 (Android 14), charging over USB.
DUMPSYS_BATTERY_CHARGING = """Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Dock powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 3566000
  status: 2
  health: 2
  present: true
  level: 81
  scale: 100
  voltage: 4211
  temperature: 287
  technology: Li-ion
  Charging state: 1
  Charging policy: 1
  Capacity level: -1
"""

# Samsung A-series (Android 10) on battery, old layout without Dock/Charging lines.
DUMPSYS_BATTERY_DISCHARGING = """Current Battery Service state:
  AC powered: false
  USB powered: false
  Wireless powered: false
  Max charging current: 0
  Max charging voltage: 0
  Charge counter: 0
  status: 3
  health: 2
  present: true
  level: 15
  scale: 100
  voltage: 3650
  temperature: 312
  technology: Li-ion
"""

PROC_MEMINFO = """MemTotal:        5814264 kB
MemFree:          187664 kB
MemAvailable:    2321580 kB
Buffers:            3720 kB
Cached:          2207940 kB
SwapCached:        30184 kB
Active:          1832376 kB
"""

PROC_MEMINFO_OLD_KERNEL = """MemTotal:        1882540 kB
MemFree:          100000 kB
Buffers:           20000 kB
Cached:           380000 kB
"""

GETPROP_LISTING = """[ro.build.version.release]: [14]
[ro.build.version.sdk]: [34]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.manufacturer]: [Google]
[ro.product.model]: [Pixel 6]
[persist.sys.timezone]: [Europe/Berlin]
"""


def test_dumpsys_battery_charging_over_usb() -> None:
    battery = parse_dumpsys_battery(DUMPSYS_BATTERY_CHARGING)
    assert battery is not None
    assert battery.level_percent == 81
    assert battery.charging is True
    assert battery.plugged == "usb"
    assert battery.temperature_c == pytest.approx(28.7)
    assert battery.voltage_mv == 4211


def test_dumpsys_battery_discharging() -> None:
    battery = parse_dumpsys_battery(DUMPSYS_BATTERY_DISCHARGING)
    assert battery is not None
    assert (battery.level_percent, battery.charging, battery.plugged) == (15, False, "")
    assert battery.temperature_c == pytest.approx(31.2)


def test_dumpsys_battery_full_and_plugged_counts_as_charging() -> None:
    text = DUMPSYS_BATTERY_CHARGING.replace("status: 2", "status: 5").replace("level: 81", "level: 100")
    battery = parse_dumpsys_battery(text)
    assert battery is not None and battery.charging is True and battery.level_percent == 100


def test_dumpsys_battery_uses_scale() -> None:
    battery = parse_dumpsys_battery("level: 50\nscale: 200\nstatus: 3\n")
    assert battery is not None and battery.level_percent == 25


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "/system/bin/sh: dumpsys: inaccessible or not found",
        "level: abc\nscale: 100",
        "level: 150\nscale: 100",  # above scale
        "level: -5",
        "level: 99999999999999999999",
        "Current Battery Service state:\n  status: 2\n",  # no level at all
        "\x00\x01\x02" * 100,
    ],
)
def test_dumpsys_battery_garbage_gives_none(garbage: str) -> None:
    assert parse_dumpsys_battery(garbage) is None


def test_dumpsys_battery_implausible_temperature_is_dropped() -> None:
    battery = parse_dumpsys_battery("level: 40\nscale: 100\ntemperature: 99999\n")
    assert battery is not None and battery.temperature_c is None


def test_meminfo_uses_memavailable() -> None:
    memory = parse_meminfo(PROC_MEMINFO)
    assert memory is not None
    assert (memory.total_kb, memory.available_kb) == (5814264, 2321580)
    assert (memory.total_mb, memory.available_mb) == (5677, 2267)  # floor of kB / 1024


def test_meminfo_old_kernel_estimates_available() -> None:
    memory = parse_meminfo(PROC_MEMINFO_OLD_KERNEL)
    assert memory is not None and memory.available_kb == 100000 + 20000 + 380000


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "cat: /proc/meminfo: No such file or directory",
        "MemTotal: lots kB",
        "MemTotal: 0 kB",
        "MemTotal: 99999999999999 kB",
    ],
)
def test_meminfo_garbage_gives_none(garbage: str) -> None:
    assert parse_meminfo(garbage) is None


def test_meminfo_available_above_total_is_dropped() -> None:
    memory = parse_meminfo("MemTotal: 1000 kB\nMemAvailable: 5000 kB\n")
    assert memory is not None and memory.available_kb is None


@pytest.mark.parametrize(("text", "cores"), [("0-7\n", 8), ("0\n", 1), ("0-3,6-7", 6), ("0-1,1-2", 3)])
def test_cpu_list(text: str, cores: int) -> None:
    assert parse_cpu_list(text) == cores


@pytest.mark.parametrize(
    "garbage", ["", "7-0", "0-99999", "zero", "0-7\n0-3", "/system/bin/sh: cat: not found", "0-3,,4"]
)
def test_cpu_list_garbage(garbage: str) -> None:
    assert parse_cpu_list(garbage) is None


def test_getprop_values_and_properties() -> None:
    props = device_properties(
        {
            "ro.product.manufacturer": "Google\n",
            "ro.product.model": "Pixel 6\r\n",
            "ro.build.version.release": "14\n",
            "ro.build.version.sdk": "34\n",
            "ro.product.cpu.abi": "arm64-v8a\n",
        }
    )
    assert (props.manufacturer, props.model, props.android_release, props.sdk_int, props.abi) == (
        "Google",
        "Pixel 6",
        "14",
        34,
        "arm64-v8a",
    )


def test_getprop_unset_and_error_output_are_empty() -> None:
    assert parse_getprop_value("\n") == ""
    assert parse_getprop_value("/system/bin/sh: getprop: inaccessible or not found\n") == ""
    assert parse_getprop_value("line one\nline two\n") == ""


def test_getprop_value_is_sanitised_and_capped() -> None:
    value = parse_getprop_value("Evil\x1b[31m Phone" + "x" * 500)
    assert "\x1b" not in value and len(value) == 100


def test_bad_release_sdk_and_abi_are_rejected() -> None:
    props = device_properties(
        {
            "ro.build.version.release": "14; rm -rf /",
            "ro.build.version.sdk": "9999",
            "ro.product.cpu.abi": "ARM 64!",
        }
    )
    assert (props.android_release, props.sdk_int, props.abi) == ("", None, "")
    assert parse_sdk_int("34") == 34 and parse_sdk_int("") is None and parse_sdk_int("-1") is None


def test_getprop_listing() -> None:
    props = parse_getprop_listing(GETPROP_LISTING + "garbage line\n[unterminated: [x\n")
    assert props["ro.product.model"] == "Pixel 6"
    assert props["persist.sys.timezone"] == "Europe/Berlin"
    assert len(props) == 6


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    battery = parse_dumpsys_battery(text)
    if battery is not None and battery.level_percent is not None:
        assert 0 <= battery.level_percent <= 100
    memory = parse_meminfo(text)
    if memory is not None:
        assert memory.total_kb > 0
    cores = parse_cpu_list(text)
    assert cores is None or 1 <= cores <= 1024
    assert len(parse_getprop_value(text)) <= 100
    parse_getprop_listing(text)
