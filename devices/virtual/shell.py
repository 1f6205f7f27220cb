"""The phone's `/system/bin/sh`, reduced to what the platform and a person at `adb shell` use.

Supported: lists joined by `;`, `&&`, `||`; `'single'` and `"double"` quotes and backslashes (shlex);
`$?`, `$NAME` and `${NAME}` outside single quotes; redirections `> file`, `>> file`, `2>/dev/null`,
`2>&1` (output is merged anyway, as legacy `shell:` merges stdout and stderr). Pipes and background jobs
are a syntax error. Unknown programs print `/system/bin/sh: X: inaccessible or not found` and give 127.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from devices.virtual.battery import BatteryState
from devices.virtual.profile import PhoneProfile
from devices.virtual.sandbox import Sandbox, SandboxError

NOT_FOUND = 127
SYNTAX_ERROR = 2


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...


class PhoneView(Protocol):
    """What the shell needs from its phone."""

    profile: PhoneProfile
    sandbox: Sandbox

    def battery_state(self) -> BatteryState: ...

    def properties(self) -> dict[str, str]: ...

    async def run_python(self, args: list[str], cwd: str, out: Output) -> int: ...


class NullOutput:
    async def write(self, data: bytes) -> None:
        return None


class FileOutput:
    """A redirection target inside the sandbox."""

    def __init__(self, path: Path, append: bool) -> None:
        self._file = path.open("ab" if append else "wb")

    async def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


@dataclass
class ShellState:
    cwd: str = "/"
    status: int = 0
    exited: bool = False
    env: dict[str, str] = field(
        default_factory=lambda: {
            "HOME": "/",
            "PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin:/odm/bin",
            "TMPDIR": "/data/local/tmp",
            "EXTERNAL_STORAGE": "/sdcard",
            "SHELL": "/system/bin/sh",
            "USER": "shell",
        }
    )


@dataclass
class Invocation:
    """One simple command being run: its words, where its output goes, and the phone."""

    phone: PhoneView
    state: ShellState
    argv: list[str]
    out: Output
    err: Output

    async def say(self, text: str) -> None:
        await self.out.write(text.encode("utf-8"))

    async def complain(self, text: str) -> None:
        await self.err.write((text.rstrip("\n") + "\n").encode("utf-8"))

    async def fail(self, error: SandboxError | OSError, program: str | None = None, path: str = "") -> int:
        name = program or self.argv[0]
        if isinstance(error, SandboxError):
            await self.complain(error.message(name))
        else:
            await self.complain(f"{name}: {path or error.filename}: {error.strerror}")
        return 1


Builtin = Callable[[Invocation], Awaitable[int]]


class ShellSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    text: str
    connector: str  # how it joins the previous segment: ";" (or first), "&&", "||"


def split_list(command: str) -> list[Segment]:
    """Split at top-level `;`, `&&`, `||`, honouring quotes and backslashes."""
    segments: list[Segment] = []
    current: list[str] = []
    connector = ";"
    quote = ""
    i = 0
    while i < len(command):
        char = command[i]
        if quote:
            current.append(char)
            if char == "\\" and quote == '"' and i + 1 < len(command):
                current.append(command[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char == "\\" and i + 1 < len(command):
            current.extend(command[i : i + 2])
            i += 1
        elif char in "'\"":
            quote = char
            current.append(char)
        elif command.startswith(("&&", "||"), i):
            segments.append(Segment("".join(current), connector))
            connector, current = command[i : i + 2], []
            i += 1
        elif char == ";" or char == "\n":
            segments.append(Segment("".join(current), connector))
            connector, current = ";", []
        elif char == "|" or (char == "&" and not command.startswith(">&", i - 1)):
            raise ShellSyntaxError(f"syntax error: '{char}' unexpected")
        elif char == "#" and (not current or current[-1].isspace()):
            break  # a comment runs to the end of the line; commands here are one line
        else:
            current.append(char)
        i += 1
    if quote:
        raise ShellSyntaxError("syntax error: unterminated quoted string")
    segments.append(Segment("".join(current), connector))
    return segments


_VARIABLE = re.compile(r"\$(\?|\{\?\}|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


def expand_variables(text: str, state: ShellState) -> str:
    """Expand `$?` and `$NAME` outside single quotes (inside them the text stays literal)."""
    pieces = re.split(r"('[^']*')", text)

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        return str(state.status) if name == "?" else state.env.get(name, "")

    return "".join(piece if piece.startswith("'") else _VARIABLE.sub(value, piece) for piece in pieces)


@dataclass
class Redirections:
    stdout: tuple[str, bool] | None = None  # (phone path, append)
    stderr_null: bool = False


def take_redirections(words: list[str]) -> tuple[list[str], Redirections]:
    """Remove redirection words from argv and describe them."""
    argv: list[str] = []
    redirect = Redirections()
    index = 0
    while index < len(words):
        word = words[index]
        match = re.fullmatch(r"(1|2)?(>>|>)(&1|&2)?(.*)", word)
        if match is None:
            argv.append(word)
            index += 1
            continue
        fd, operator, dup, target = match.groups()
        if not dup and not target:
            if index + 1 >= len(words):
                raise ShellSyntaxError(f"syntax error: missing target after '{word}'")
            target = words[index + 1]
            index += 1
        index += 1
        if dup:
            continue  # 2>&1 / 1>&2: the stream is merged already
        if fd == "2":
            redirect.stderr_null = target == "/dev/null"
        else:
            redirect.stdout = (target, operator == ">>")
    return argv, redirect


class Shell:
    def __init__(
        self, phone: PhoneView, builtins: dict[str, Builtin], state: ShellState | None = None
    ) -> None:
        self.phone = phone
        self.builtins = builtins
        self.state = state or ShellState()

    async def run(self, command: str, out: Output) -> int:
        """Run a command line; its exit status is also left in `state.status` for `$?`."""
        try:
            segments = split_list(command)
        except ShellSyntaxError as exc:
            await out.write(f"/system/bin/sh: {exc}\n".encode())
            self.state.status = SYNTAX_ERROR
            return SYNTAX_ERROR
        for segment in segments:
            if self.state.exited:
                break
            if segment.connector == "&&" and self.state.status != 0:
                continue
            if segment.connector == "||" and self.state.status == 0:
                continue
            self.state.status = await self._run_segment(segment.text, out)
        return self.state.status

    async def _run_segment(self, text: str, out: Output) -> int:
        try:
            words = shlex.split(expand_variables(text, self.state))
            argv, redirect = take_redirections(words)
        except (ValueError, ShellSyntaxError) as exc:
            await out.write(f"/system/bin/sh: {exc}\n".encode())
            return SYNTAX_ERROR
        if not argv:
            return self.state.status
        err: Output = NullOutput() if redirect.stderr_null else out
        target: FileOutput | None = None
        if redirect.stdout is not None:
            path, append = redirect.stdout
            if path == "/dev/null":
                stdout: Output = NullOutput()
            else:
                try:
                    target = FileOutput(self.phone.sandbox.resolve(path, self.state.cwd, write=True), append)
                except OSError as exc:
                    message = exc.message("/system/bin/sh") if isinstance(exc, SandboxError) else str(exc)
                    await err.write((message + "\n").encode())
                    return 1
                stdout = target
        else:
            stdout = out
        try:
            return await self._dispatch(Invocation(self.phone, self.state, argv, stdout, err))
        finally:
            if target is not None:
                target.close()

    async def _dispatch(self, call: Invocation) -> int:
        program = call.argv[0]
        if program == self.phone.profile.python and not self.phone.profile.stock:
            return await self.phone.run_python(call.argv[1:], self.state.cwd, call.out)
        builtin = self.builtins.get(program) or self.builtins.get(program.rsplit("/", 1)[-1])
        if builtin is None or (program.startswith("/") and not program.startswith(("/system/", "/bin/"))):
            await call.complain(f"/system/bin/sh: {program}: inaccessible or not found")
            return NOT_FOUND
        return await builtin(call)
