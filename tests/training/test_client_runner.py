"""Pure parts of the per-phone runner: the agent's output is untrusted text."""

from __future__ import annotations

import json

import pytest

from training.engine.runtimes.agent_output import EXIT_MARKER, parse_agent_output


class Recorder:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, line: dict) -> None:
        self.seen.append(line)


def test_progress_done_and_exit_status_are_read() -> None:
    lines = [
        json.dumps({"event": "progress", "epoch": 1, "step": 3, "steps": 10, "loss": 0.5}),
        "some warning printed by torch",
        json.dumps({"event": "done", "samples": 90}),
        f"{EXIT_MARKER}0",
    ]
    recorder = Recorder()
    run = parse_agent_output(lines, recorder)  # type: ignore[arg-type]
    assert run.exit_code == 0
    assert run.done == {"event": "done", "samples": 90}
    assert [m["step"] for m in recorder.seen] == [3]
    assert run.tail == ["some warning printed by torch"]


def test_error_message_and_nonzero_exit() -> None:
    run = parse_agent_output(
        [json.dumps({"event": "error", "message": "shard missing"}), f"{EXIT_MARKER}2"], None
    )
    assert run.exit_code == 2
    assert run.error == "shard missing"


@pytest.mark.parametrize(
    "garbage",
    ["{not json", "[1, 2]", '{"event": "progress"' + " " * 70000 + "}", "\x00\xff", f"{EXIT_MARKER}abc"],
)
def test_garbage_lines_never_raise(garbage: str) -> None:
    run = parse_agent_output([garbage], Recorder())  # type: ignore[arg-type]
    assert run.done == {}
    if garbage.startswith(EXIT_MARKER):
        assert run.exit_code == -1


def test_missing_exit_marker_means_unknown_status() -> None:
    assert parse_agent_output(["hello"], None).exit_code is None
