"""A task for resilience tests: it records that it started, then holds until the test releases it.

Loaded into a real worker with `celery worker --include tests.resilience.holding_tasks`. Its name starts
with neither `devices.` nor `training.`, so config.celery routes it to Celery's default queue (devices).
The files it writes are the test's only view into the worker: one `<token>.started.<n>` per delivery
(so a redelivery is visible as a second start) and `<token>.done` when it finishes.
"""

from __future__ import annotations

import time
from pathlib import Path

from config.celery import app

HOLD_LIMIT_S = 120.0


@app.task(name="tests.resilience.hold", acks_late=True)
def hold(marker_dir: str, token: str) -> str:
    directory = Path(marker_dir)
    starts = len(list(directory.glob(f"{token}.started.*")))
    (directory / f"{token}.started.{starts + 1}").write_text("")
    release = directory / f"{token}.release"
    deadline = time.monotonic() + HOLD_LIMIT_S
    # Polls a file the test creates: the task stands for a long round that outlives a broker outage.
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{token} was never released")
        time.sleep(0.05)
    (directory / f"{token}.done").write_text("")
    return token
