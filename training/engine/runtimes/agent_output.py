"""The agent's output, as every runtime sees it: one JSON object per line (progress, done, error), plus —
over a shell — the exit marker our command template echoes. Untrusted text: a line that is too long, not
JSON or not an object is kept only as the tail a failure reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from training.engine.runtimes.base import AgentRun, ProgressCallback

EXIT_MARKER = "FEDFLEET_EXIT="
MAX_LINE_CHARS = 64 * 1024
# Bounds on any JSON a phone sends (progress lines, result.json): nesting deeper than this is refused
# before the parser recurses (Python's json recurses per level: a few thousand `[` crash it), and a
# number is at most 32 characters — a 400-digit integer is valid JSON but overflows every float it meets.
MAX_JSON_DEPTH = 16
MAX_NUMBER_CHARS = 32


class PhoneJsonError(ValueError):
    """JSON from a phone that we refuse to use; the message says why."""


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise PhoneJsonError(f"a number of {len(text)} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise PhoneJsonError(f"a number of {len(text)} characters")
    number = float(text)
    if not math.isfinite(number):  # 1e999 parses to inf
        raise PhoneJsonError(f"{text} is not a finite number")
    return number


def _no_constant(name: str) -> float:
    raise PhoneJsonError(f"{name} is not a number")


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def phone_json(text: str, *, max_chars: int = MAX_LINE_CHARS) -> Any:
    """Parse JSON a phone sent, within bounds on size, depth and numbers; PhoneJsonError otherwise."""
    if len(text) > max_chars:
        raise PhoneJsonError(f"{len(text)} characters, over the {max_chars}-character limit")
    depth = _nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise PhoneJsonError(f"nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    try:
        return json.loads(
            text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant
        )
    except json.JSONDecodeError as exc:
        raise PhoneJsonError(f"not JSON: {exc}") from None


def parse_agent_output(lines: Iterable[str], on_progress: ProgressCallback | None) -> AgentRun:
    run = AgentRun()
    for raw in lines:
        line = raw.strip()
        if line.startswith(EXIT_MARKER):
            try:
                run.exit_code = int(line[len(EXIT_MARKER) :])
            except ValueError:
                run.exit_code = -1
            continue
        message: Any = None
        if line.startswith("{"):
            try:
                message = phone_json(line)
            except PhoneJsonError:
                message = None
        if isinstance(message, dict):
            kind = message.get("event")
            if kind == "progress" and on_progress is not None:
                on_progress(message)
            elif kind == "done":
                run.done = message
            elif kind == "error":
                run.error = str(message.get("message", ""))[:300]
            continue
        run.tail = (run.tail + [line[:300]])[-5:]
    return run
