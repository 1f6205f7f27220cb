"""Live job events on the `ws/jobs/<id>/` websocket (types listed in DESIGN.md).

Events are sent after the surrounding transaction commits, so a browser never sees a state the database
does not hold yet; a page that (re)connects loads the HTTP snapshot first and then applies events.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

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
        "job.log",
    }
)


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def _send_now(job_id: int, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(job_group(job_id), {"type": "job.event", "event": event})
    except Exception:  # noqa: BLE001 - a lost live event must never fail a round; snapshots recover it
        log.warning("could not send %s for job %s", event.get("type"), job_id, exc_info=True)


def send_job_event(job_id: int, event_type: str, **payload: Any) -> None:
    """Queue an event for the job's websocket group, sent when the current transaction commits."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown job event type {event_type!r}")
    event = {"type": event_type, "job": job_id, **payload}
    transaction.on_commit(lambda: _send_now(job_id, event))
