"""Live fleet events on the `ws/fleet/` websocket (group `fleet`).

Types: `device.status` (status changed), `device.telemetry` (battery/RAM/... changed), `device.updated`
(settings edited), `device.added`, `device.removed`. Each carries the device's fleet row (devices.services.fleet_row) and, for changes that
move the per-status counts, the new counts. Events are sent after the transaction commits (never a state
the database does not hold); a lost event is only logged, since a page reloads the HTTP snapshot whenever
its websocket reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

FLEET_GROUP = "fleet"
# The channel-layer message type: the consumer's handler is FleetConsumer.fleet_event.
FLEET_MESSAGE_TYPE = "fleet.event"
FLEET_EVENT_TYPES = frozenset(
    {"device.status", "device.telemetry", "device.updated", "device.added", "device.removed"}
)


def _send_now(event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(FLEET_GROUP, {"type": FLEET_MESSAGE_TYPE, "event": event})
    except Exception:  # noqa: BLE001 - a lost live event must never undo a committed write
        log.warning("could not broadcast %s", event.get("type"), exc_info=True)


def send_fleet_event(event_type: str, **payload: Any) -> None:
    """Queue an event for the fleet group, sent when the current transaction commits."""
    if event_type not in FLEET_EVENT_TYPES:
        raise ValueError(f"unknown fleet event type {event_type!r}")
    event = {"type": event_type, **payload}
    transaction.on_commit(lambda: _send_now(event))
