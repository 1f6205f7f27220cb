"""The phone's `/system/bin/sh`, reduced to what the platform and a person at `adb shell` use.

Supported: lists joined by `;`, `&&`, `||`; `'single'` and `"double"` quotes and backslashes (shlex);
`$?`, `$!`, `$NAME` and `${NAME}` outside single quotes; redirections `> file`, `>> file`, `2>/dev/null`,
`2>&1` (output is merged anyway, as legacy `shell:` merges stdout and stderr); a simple command ended by
`&` runs in the background as a job of the phone (it outlives the shell stream, as a `nohup`ed process
outlives `adb shell`), `$!` is its pid and `kill` (commands.py) stops it; `nohup CMD` runs CMD. Pipes are
a syntax error. Unknown programs print `/system/bin/sh: X: inaccessible or not found` and give 127.
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

    def start_job(self, work: Callable[[], Awaitable[int]]) -> int:
        """Run `work` as a background job of the phone; returns its pid."""
        ...

    def job_alive(self, pid: int) -> bool: ...

    async def kill_job(self, pid: int) -> bool:
        """Stop a background job (its process group); False if there is none with that pid."""
        ...


class NullOutput:
    async def write(self, data: bytes) -> None:
        return None


class FileOutput:
    """A redirection target inside the sandbox."""

    def __init__(self, path: Path, append: bool) -> None:
        # Unbuffered: a background job's log is read while the job still runs.
        self._file = path.open("ab" if append else "wb", buffering=0)

    async def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


@dataclass
class ShellState:
    cwd: str = "/"
    status: int = 0
    exited: bool = False
    last_job: int | None = None  # `$!`: the pid of the last background job
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
    background: bool = False  # ended by `&`: runs as a job, the list goes on at once


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
        elif char == "&" and not command.startswith(">&", i - 1):
            if not "".join(current).strip():
                raise ShellSyntaxError("syntax error: '&' unexpected")
            segments.append(Segment("".join(current), connector, background=True))
            connector, current = ";", []
        elif char == "|":
            raise ShellSyntaxError(f"syntax error: '{char}' unexpected")
        elif char == "#" and (not current or current[-1].isspace()):
            break  # a comment runs to the end of the line; commands here are one line
        else:
            current.append(char)
        i += 1
    if quote:
        raise ShellSyntaxError("syntax error: unterminated quoted string")
    if "".join(current).strip() or not segments or not segments[-1].background:
        segments.append(Segment("".join(current), connector))
    return segments


_VARIABLE = re.compile(r"\$(\?|!|\{\?\}|\{!\}|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


def expand_variables(text: str, state: ShellState) -> str:
    """Expand `$?` and `$NAME` outside single quotes (inside them the text stays literal)."""
    pieces = re.split(r"('[^']*')", text)

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        if name == "!":
            return "" if state.last_job is None else str(state.last_job)
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
            self.state.status = await self._run_segment(segment.text, out, background=segment.background)
        return self.state.status

    async def _run_segment(self, text: str, out: Output, *, background: bool = False) -> int:
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
        call = Invocation(self.phone, self.state, argv, stdout, err)
        if background:
            return self._start_job(call, target, quiet_output=redirect.stdout is None)
        try:
            return await self._dispatch(call)
        finally:
            if target is not None:
                target.close()

    def _start_job(self, call: Invocation, target: FileOutput | None, *, quiet_output: bool) -> int:
        """`cmd &`: the job keeps its own redirections open until it ends; without one its output is
        dropped (the shell stream it would write to ends long before a resident agent does)."""
        if quiet_output:
            call.out = NullOutput()
        call.err = call.out  # `> log 2>&1 &`: both go to the job's file
        # Its own state: a job's `cd` must not move the shell that started it.
        call.state = ShellState(cwd=self.state.cwd, env=dict(self.state.env))

        async def work() -> int:
            try:
                return await self._dispatch(call)
            finally:
                if target is not None:
                    target.close()

        self.state.last_job = self.phone.start_job(work)
        return 0

    async def _dispatch(self, call: Invocation) -> int:
        if call.argv[0] == "nohup":  # nothing to detach from here: a job already outlives its stream
            call.argv = call.argv[1:]
            if not call.argv:
                await call.complain("usage: nohup COMMAND [ARG]...")
                return NOT_FOUND
        program = call.argv[0]
        if program == self.phone.profile.python and not self.phone.profile.stock:
            return await self.phone.run_python(call.argv[1:], self.state.cwd, call.out)
        builtin = self.builtins.get(program) or self.builtins.get(program.rsplit("/", 1)[-1])
        if builtin is None or (program.startswith("/") and not program.startswith(("/system/", "/bin/"))):
            await call.complain(f"/system/bin/sh: {program}: inaccessible or not found")
            return NOT_FOUND
        return await builtin(call)
