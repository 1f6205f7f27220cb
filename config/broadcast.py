"""Send a message to a Channels group once the current transaction commits.

The one way live events leave the server (devices' fleet events, training's job events): a page never
sees a state the database does not hold yet, and a lost event is only logged — a page that reconnects
reloads its HTTP snapshot first, so it is never left wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def _send_now(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception as exc:  # noqa: BLE001 - a lost live event must never undo a committed write
        # One line, no traceback: with Redis down this happens for every write, and the cause is known.
        log.warning("could not broadcast %s to %s: %s", message.get("event", {}).get("type"), group, exc)


def broadcast_on_commit(group: str, message_type: str, event: dict[str, Any]) -> None:
    """Queue `{"type": message_type, "event": event}` for `group`, sent when the transaction commits."""
    message = {"type": message_type, "event": event}
    transaction.on_commit(lambda: _send_now(group, message))
