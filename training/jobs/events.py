"""Live job events on the `ws/jobs/<id>/` websocket (types listed in DESIGN.md).

Events are sent after the surrounding transaction commits, so a browser never sees a state the database
does not hold yet; a page that (re)connects loads the HTTP snapshot first and then applies events.
"""

from __future__ import annotations

from typing import Any

from config.broadcast import broadcast_on_commit

EVENT_TYPES = frozenset(
    {
        "round.started",
        "device.progress",
        "device.finished",
        "device.failed",
        "round.completed",
        "round.abandoned",
        "job.status",
        "job.exclusion",
        "analysis.updated",  # a round's influence/attack analysis or an AnalysisRun's progress
        "job.log",
        "batch.finished",  # a batch of simulated clients trained (engine/sim_training.py)
    }
)


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def send_job_event(job_id: int, event_type: str, **payload: Any) -> None:
    """Queue an event for the job's websocket group, sent when the current transaction commits."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown job event type {event_type!r}")
    broadcast_on_commit(job_group(job_id), "job.event", {"type": event_type, "job": job_id, **payload})
