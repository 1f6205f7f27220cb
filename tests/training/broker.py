"""Unit tests have no broker: record what the engine would queue instead (the task objects' send methods
are replaced, so training/jobs/dispatch.py's sends by name land here too)."""

from __future__ import annotations

import pytest

Sent = list[tuple[str, tuple]]


def record_sends(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> Sent:
    from training.engine import tasks  # noqa: PLC0415 - registers the tasks dispatch looks up

    sent: Sent = []
    for name in names:
        task = getattr(tasks, name)
        monkeypatch.setattr(task, "delay", lambda *a, _n=name, **k: sent.append((_n, a)))
        monkeypatch.setattr(task, "delay_on_commit", lambda *a, _n=name, **k: sent.append((_n, a)))
        monkeypatch.setattr(
            task, "apply_async", lambda a=(), k=None, _n=name, **o: sent.append((_n, tuple(a)))
        )
        monkeypatch.setattr(
            task, "apply_async_on_commit", lambda a=(), k=None, _n=name, **o: sent.append((_n, tuple(a)))
        )
    return sent
