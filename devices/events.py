"""Live fleet events on the `ws/fleet/` websocket (group `fleet`).

Types: `device.status` (status changed), `device.telemetry` (battery/RAM/... changed), `device.updated`
(settings edited), `device.added`, `device.removed`. Each carries the device's fleet row (devices.services.fleet_row) and, for changes that
move the per-status counts, the new counts. Events are sent after the transaction commits (never a state
the database does not hold); a lost event is only logged, since a page reloads the HTTP snapshot whenever
its websocket reconnects.
"""

from __future__ import annotations

from typing import Any

from config.broadcast import broadcast_on_commit

FLEET_GROUP = "fleet"
# The channel-layer message type: the consumer's handler is FleetConsumer.fleet_event.
FLEET_MESSAGE_TYPE = "fleet.event"
FLEET_EVENT_TYPES = frozenset(
    {"device.status", "device.telemetry", "device.updated", "device.added", "device.removed"}
)


def send_fleet_event(event_type: str, **payload: Any) -> None:
    """Queue an event for the fleet group, sent when the current transaction commits."""
    if event_type not in FLEET_EVENT_TYPES:
        raise ValueError(f"unknown fleet event type {event_type!r}")
    broadcast_on_commit(FLEET_GROUP, FLEET_MESSAGE_TYPE, {"type": event_type, **payload})
