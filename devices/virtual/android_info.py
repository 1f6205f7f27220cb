"""What Android prints about itself, in Android's own formats: getprop, dumpsys battery, /proc files."""

from __future__ import annotations

from devices.virtual.battery import HEALTH_GOOD, BatteryState
from devices.virtual.profile import PhoneProfile
from devices.virtual.scenarios import AVAILABILITY_PROPERTY, describe_availability


def system_properties(profile: PhoneProfile) -> dict[str, str]:
    fingerprint = (
        f"{profile.brand}/{profile.product}/{profile.device}:{profile.android_release}/"
        f"VIRT.{profile.sdk}/1:user/release-keys"
    )
    return {
        "ro.product.model": profile.model,
        "ro.product.manufacturer": profile.manufacturer,
        "ro.product.brand": profile.brand,
        "ro.product.name": profile.product,
        "ro.product.device": profile.device,
        "ro.product.cpu.abi": profile.abi,
        "ro.product.cpu.abilist": profile.abi
        + (",armeabi-v7a,armeabi" if profile.abi == "arm64-v8a" else ""),
        "ro.build.version.release": profile.android_release,
        "ro.build.version.sdk": str(profile.sdk),
        "ro.build.type": "user",
        "ro.build.fingerprint": fingerprint,
        "ro.serialno": profile.serial,
        "ro.boot.serialno": profile.serial,
        "ro.hardware": profile.device,
        "ro.adb.secure": "1",
        "ro.debuggable": "0",
        "sys.boot_completed": "1",
        "persist.sys.timezone": "UTC",
        # Not an Android property: the lab tells the platform which availability model drives this phone.
        AVAILABILITY_PROPERTY: describe_availability(profile.availability),
    }


def getprop_listing(props: dict[str, str]) -> str:
    """`getprop` with no argument: `[key]: [value]` lines, sorted."""
    return "".join(f"[{key}]: [{value}]\n" for key, value in sorted(props.items()))


def dumpsys_battery(state: BatteryState) -> str:
    counter = state.level * 40_000  # µAh left of a ~4000 mAh battery
    lines = [
        "Current Battery Service state:",
        "  AC powered: false",
        f"  USB powered: {str(state.plugged).lower()}",
        "  Wireless powered: false",
        f"  Max charging current: {500000 if state.plugged else 0}",
        f"  Max charging voltage: {5000000 if state.plugged else 0}",
        f"  Charging counter: {counter}",
        f"  status: {state.status}",
        f"  health: {HEALTH_GOOD}",
        "  present: true",
        f"  level: {state.level}",
        "  scale: 100",
        f"  voltage: {state.voltage_mv}",
        f"  temperature: {state.temperature_tenths_c}",
        f"  technology: {state.technology}",
    ]
    return "\n".join(lines) + "\n"


def meminfo(profile: PhoneProfile) -> str:
    total = profile.ram_mb * 1024 * 93 // 100  # the kernel reserves a slice, as on real phones
    free = total // 6
    available = total * 45 // 100
    rows = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available),
        ("Buffers", total // 200),
        ("Cached", total // 4),
        ("SwapCached", 0),
        ("Active", total // 3),
        ("Inactive", total // 5),
        ("SwapTotal", total // 2),
        ("SwapFree", total // 3),
    ]
    return "".join(f"{name + ':':<16}{value:>8} kB\n" for name, value in rows)


def cpuinfo(profile: PhoneProfile) -> str:
    blocks = []
    for index in range(profile.cores):
        part = "0xd41" if index >= profile.cores // 2 else "0xd05"
        blocks.append(
            f"processor\t: {index}\nBogoMIPS\t: 52.00\n"
            "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
            "asimdrdm lrcpc dcpop asimddp\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\n"
            "CPU revision\t: 0\n"
        )
    return "\n".join(blocks) + f"\nHardware\t: {profile.device}\n"


def cpu_possible(profile: PhoneProfile) -> str:
    return f"0-{profile.cores - 1}\n" if profile.cores > 1 else "0\n"


def virtual_files(profile: PhoneProfile) -> dict[str, str]:
    """Read-only files that exist on every phone outside its sandbox."""
    return {
        "/proc/meminfo": meminfo(profile),
        "/proc/cpuinfo": cpuinfo(profile),
        "/sys/devices/system/cpu/possible": cpu_possible(profile),
        "/sys/devices/system/cpu/present": cpu_possible(profile),
        "/proc/version": "Linux version 5.10.157-android13-4-virtual (build@fedfleet) #1 SMP PREEMPT\n",
    }
