"""The programs the virtual phone's shell knows, printing what Android's toybox prints."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

from devices.virtual import android_info
from devices.virtual.sandbox import SandboxError, normalize
from devices.virtual.shell import Builtin, Invocation


def split_flags(argv: list[str], known: str) -> tuple[set[str], list[str]]:
    """Single-letter flags (`-rf`, `-p`) before the operands; `--` ends them."""
    flags: set[str] = set()
    operands: list[str] = []
    flags_done = False
    for word in argv:
        if flags_done or not word.startswith("-") or word == "-":
            operands.append(word)
        elif word == "--":
            flags_done = True
        else:
            flags.update(letter for letter in word[1:] if letter in known)
    return flags, operands


def read_phone_file(call: Invocation, phone_path: str) -> bytes:
    """A sandbox file or one of the read-only /proc and /sys files; raises OSError/SandboxError."""
    virtual = android_info.virtual_files(call.phone.profile).get(normalize(phone_path, call.state.cwd))
    if virtual is not None:
        return virtual.encode()
    host = call.phone.sandbox.resolve(phone_path, call.state.cwd)
    if host.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), phone_path)
    try:
        return host.read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, phone_path) from None


async def cmd_cat(call: Invocation) -> int:
    status = 0
    for path in call.argv[1:]:
        try:
            await call.out.write(read_phone_file(call, path))
        except OSError as exc:
            status = await call.fail(exc, path=path)
    return status


async def cmd_echo(call: Invocation) -> int:
    words = call.argv[1:]
    newline = True
    if words and words[0] == "-n":
        newline, words = False, words[1:]
    await call.say(" ".join(words) + ("\n" if newline else ""))
    return 0


async def cmd_getprop(call: Invocation) -> int:
    props = call.phone.properties()
    if len(call.argv) == 1:
        await call.say(android_info.getprop_listing(props))
        return 0
    default = call.argv[2] if len(call.argv) > 2 else ""
    await call.say(props.get(call.argv[1], default) + "\n")
    return 0


async def cmd_dumpsys(call: Invocation) -> int:
    service = call.argv[1] if len(call.argv) > 1 else ""
    if service == "battery":
        await call.say(android_info.dumpsys_battery(call.phone.battery_state()))
    else:
        await call.say(f"Can't find service: {service}\n")
    return 0


async def cmd_nproc(call: Invocation) -> int:
    await call.say(f"{call.phone.profile.cores}\n")
    return 0


async def cmd_df(call: Invocation) -> int:
    flags, _ = split_flags(call.argv[1:], "hk")
    total_k = call.phone.profile.storage_mb * 1024
    used_k = _tree_size(call.phone.sandbox.root) // 1024 + total_k // 5  # the OS and apps take a fifth
    rows = [
        ("/dev/block/dm-5", total_k, used_k, "/data"),
        ("/dev/fuse", total_k, used_k, "/storage/emulated"),
    ]
    if "h" in flags:
        lines = ["Filesystem       Size  Used Avail Use% Mounted on"]
        for name, size, used, mount in rows:
            lines.append(
                f"{name:<16}{_human(size):>5} {_human(used):>5} {_human(size - used):>5} "
                f"{100 * used // size:>3}% {mount}"
            )
    else:
        lines = ["Filesystem       1K-blocks     Used Available Use% Mounted on"]
        for name, size, used, mount in rows:
            lines.append(f"{name:<16} {size:>9} {used:>8} {size - used:>9} {100 * used // size:>3}% {mount}")
    await call.say("\n".join(lines) + "\n")
    return 0


def _human(kib: int) -> str:
    value = float(kib)
    for unit in "KMGT":
        if value < 1024:
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.0f}P"


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


async def cmd_mkdir(call: Invocation) -> int:
    flags, operands = split_flags(call.argv[1:], "p")
    status = 0
    for path in operands:
        try:
            host = call.phone.sandbox.resolve(path, call.state.cwd, write=True)
            if "p" in flags:
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.mkdir()
        except SandboxError as exc:
            status = await call.fail(exc)
        except OSError as exc:
            await call.complain(f"mkdir: '{path}': {exc.strerror}")
            status = 1
    return status


async def cmd_rm(call: Invocation) -> int:
    flags, operands = split_flags(call.argv[1:], "rRf")
    recursive, force = bool(flags & {"r", "R"}), "f" in flags
    status = 0
    for path in operands:
        try:
            if call.phone.sandbox.is_root(path, call.state.cwd):
                raise SandboxError(errno.EACCES, path)
            host = call.phone.sandbox.resolve(path, call.state.cwd, write=True)
            if host.is_dir() and not host.is_symlink():
                if not recursive:
                    await call.complain(f"rm: {path}: is a directory")
                    status = 1
                    continue
                await asyncio.to_thread(shutil.rmtree, host)
            else:
                host.unlink()
        except FileNotFoundError:
            if not force:
                await call.complain(f"rm: {path}: No such file or directory")
                status = 1
        except OSError as exc:
            status = await call.fail(exc, path=path)
    return status


async def cmd_sha256sum(call: Invocation) -> int:
    status = 0
    for path in call.argv[1:]:
        try:
            host = call.phone.sandbox.resolve(path, call.state.cwd)
            if host.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            digest = await asyncio.to_thread(_sha256_file, host)
            await call.say(f"{digest}  {path}\n")
        except FileNotFoundError:
            await call.complain(f"sha256sum: {path}: No such file or directory")
            status = 1
        except OSError as exc:
            status = await call.fail(exc, path=path)
    return status


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def cmd_ls(call: Invocation) -> int:
    flags, operands = split_flags(call.argv[1:], "la1")
    targets = operands or ["."]
    status = 0
    blocks: list[str] = []
    for path in targets:
        try:
            host = call.phone.sandbox.resolve(path, call.state.cwd)
            info = host.stat()
        except FileNotFoundError:
            await call.complain(f"ls: {path}: No such file or directory")
            status = 1
            continue
        except OSError as exc:
            status = await call.fail(exc, path=path)
            continue
        if not stat.S_ISDIR(info.st_mode):
            blocks.append(_ls_line(path, info, "l" in flags))
            continue
        names = sorted(os.listdir(host)) + ([".", ".."] if "a" in flags else [])
        shown = sorted(n for n in names if "a" in flags or not n.startswith("."))
        lines = [_ls_line(n, (host / n).lstat(), "l" in flags) for n in shown]
        header = f"{path}:\n" if len(targets) > 1 else ""
        total = f"total {sum((host / n).lstat().st_blocks for n in shown) // 2}\n" if "l" in flags else ""
        blocks.append(header + total + "".join(lines))
    await call.say("\n".join(blocks) if len(targets) > 1 else "".join(blocks))
    return status


def _ls_line(name: str, info: os.stat_result, long: bool) -> str:
    if not long:
        return name + "\n"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.st_mtime))
    return f"{stat.filemode(info.st_mode)} {info.st_nlink} shell shell {info.st_size:>8} {stamp} {name}\n"


async def cmd_touch(call: Invocation) -> int:
    status = 0
    for path in call.argv[1:]:
        try:
            call.phone.sandbox.resolve(path, call.state.cwd, write=True).touch()
        except OSError as exc:
            status = await call.fail(exc, path=path)
    return status


async def cmd_mv(call: Invocation) -> int:
    if len(call.argv) != 3:
        await call.complain("usage: mv SOURCE DEST")
        return 1
    try:
        source = call.phone.sandbox.resolve(call.argv[1], call.state.cwd, write=True)
        target = call.phone.sandbox.resolve(call.argv[2], call.state.cwd, write=True)
        if target.is_dir():
            target = target / source.name
        os.replace(source, target)
    except OSError as exc:
        return await call.fail(exc, path=call.argv[1])
    return 0


async def cmd_chmod(call: Invocation) -> int:
    if len(call.argv) < 3:
        await call.complain("chmod: needs MODE FILE...")
        return 1
    try:
        mode = int(call.argv[1], 8)
    except ValueError:
        await call.complain(f"chmod: bad mode '{call.argv[1]}'")
        return 1
    status = 0
    for path in call.argv[2:]:
        try:
            call.phone.sandbox.resolve(path, call.state.cwd, write=True).chmod(mode & 0o777)
        except OSError as exc:
            status = await call.fail(exc, path=path)
    return status


async def cmd_cd(call: Invocation) -> int:
    path = call.argv[1] if len(call.argv) > 1 else "/"
    try:
        host = call.phone.sandbox.resolve(path, call.state.cwd)
    except SandboxError as exc:
        await call.complain(exc.message("/system/bin/sh: cd"))
        return 2
    if not host.is_dir():
        await call.complain(f"/system/bin/sh: cd: {path}: No such file or directory")
        return 2
    call.state.cwd = normalize(path, call.state.cwd)
    return 0


async def cmd_pwd(call: Invocation) -> int:
    await call.say(call.state.cwd + "\n")
    return 0


async def cmd_true(call: Invocation) -> int:
    return 0


async def cmd_false(call: Invocation) -> int:
    return 1


async def cmd_exit(call: Invocation) -> int:
    call.state.exited = True
    try:
        return int(call.argv[1]) & 0xFF if len(call.argv) > 1 else call.state.status
    except ValueError:
        return 2


async def cmd_sleep(call: Invocation) -> int:
    try:
        seconds = float(call.argv[1])
    except (IndexError, ValueError):
        await call.complain("sleep: needs a number of seconds")
        return 1
    await asyncio.sleep(seconds)
    return 0


async def cmd_uname(call: Invocation) -> int:
    machine = "aarch64" if call.phone.profile.abi.startswith("arm64") else "x86_64"
    if "-a" in call.argv:
        await call.say(f"Linux localhost 5.10.157-android13-4-virtual #1 SMP PREEMPT {machine} Toybox\n")
    else:
        await call.say((machine if "-m" in call.argv else "Linux") + "\n")
    return 0


async def cmd_id(call: Invocation) -> int:
    await call.say("uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log),3003(inet)\n")
    return 0


async def cmd_whoami(call: Invocation) -> int:
    await call.say("shell\n")
    return 0


SYSTEM_PACKAGES = (
    "android",
    "com.android.chrome",
    "com.android.providers.settings",
    "com.android.settings",
    "com.android.shell",
    "com.android.systemui",
    "com.google.android.gms",
    "com.google.android.gsf",
)
TERMUX_PACKAGE = "com.termux"


def installed_packages(call: Invocation) -> list[tuple[str, bool]]:
    """(package, is a system package) for everything this phone has installed."""
    packages = [(name, True) for name in SYSTEM_PACKAGES]
    if call.phone.profile.termux.installed:
        packages.append((TERMUX_PACKAGE, False))
    return sorted(packages)


async def cmd_pm(call: Invocation) -> int:
    """`pm list packages [-f] [-s|-3] [FILTER]` as Android prints it (`package:<name>` lines)."""
    if call.argv[1:3] != ["list", "packages"]:
        await call.complain(f"Unknown command: {' '.join(call.argv[1:2]) or '(none)'}")
        return 255
    flags, operands = split_flags(call.argv[3:], "fs3")
    wanted = operands[0] if operands else ""
    lines = []
    for name, system in installed_packages(call):
        if wanted not in name or ("s" in flags and not system) or ("3" in flags and system):
            continue
        where = f"/system/app/{name}/{name}.apk=" if system else f"/data/app/~~fedfleet/{name}-1/base.apk="
        lines.append(f"package:{where if 'f' in flags else ''}{name}\n")
    await call.say("".join(lines))
    return 0


async def cmd_kill(call: Invocation) -> int:
    """`kill [-9|-KILL|-TERM|-15|-0] PID...`: a background job of this phone (the shell user's own
    processes are all a phone's shell can signal); -0 only asks whether it is alive."""
    words = call.argv[1:]
    check_only = False
    if words and words[0].startswith("-"):
        signal_name = words.pop(0)[1:].upper().removeprefix("SIG")
        if signal_name not in ("0", "9", "15", "KILL", "TERM"):
            await call.complain(f"kill: unknown signal '{signal_name}'")
            return 1
        check_only = signal_name == "0"
    if not words:
        await call.complain("usage: kill [-s SIGNAL | -SIGNAL] PID...")
        return 1
    status = 0
    for word in words:
        pid = int(word) if word.isdigit() and len(word) <= 9 else None
        if pid is None:
            await call.complain(f"kill: {word}: arguments must be process or job IDs")
            status = 1
            continue
        alive = call.phone.job_alive(pid) if check_only else await call.phone.kill_job(pid)
        if not alive:
            await call.complain(f"kill: {pid}: No such process")
            status = 1
    return status


BUILTINS: dict[str, Builtin] = {
    "cat": cmd_cat,
    "cd": cmd_cd,
    "chmod": cmd_chmod,
    "df": cmd_df,
    "dumpsys": cmd_dumpsys,
    "echo": cmd_echo,
    "exit": cmd_exit,
    "false": cmd_false,
    "getprop": cmd_getprop,
    "id": cmd_id,
    "kill": cmd_kill,
    "ls": cmd_ls,
    "mkdir": cmd_mkdir,
    "mv": cmd_mv,
    "nproc": cmd_nproc,
    "pm": cmd_pm,
    "pwd": cmd_pwd,
    "rm": cmd_rm,
    "sha256sum": cmd_sha256sum,
    "sleep": cmd_sleep,
    "touch": cmd_touch,
    "true": cmd_true,
    "uname": cmd_uname,
    "whoami": cmd_whoami,
}
