"""The agent's output, as every runtime sees it: one JSON object per line (progress, done, error), plus —
over a shell — the exit marker our command template echoes. Untrusted text: a line that is too long, not
JSON or not an object is kept only as the tail a failure reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from training.engine.runtimes.base import AgentRun, ProgressCallback

EXIT_MARKER = "FEDFLEET_EXIT="


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
        if line.startswith("{") and len(line) < 64 * 1024:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
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
