"""Send a message to a Channels group once the current transaction commits.

The one way live events leave the server (devices' fleet events, training's job events): a page never
sees a state the database does not hold yet, and a lost event is only logged — a page that reconnects
reloads its HTTP snapshot first, so it is never left wrong.

Sending from sync code: `async_to_sync(layer.group_send)` starts a thread with a fresh event loop for
every call, and channels_redis keeps its Redis connections per loop, so each event also opened (and
dropped) a Redis connection: about 2 ms of CPU per event, and a round sends several per phone. Instead
each process keeps one event loop on a daemon thread for the channel layer, and sync code hands it the
send and waits for the outcome (so events from one thread keep their order and errors are still logged
here). The in-memory layer of the unit tests is the exception: its queues belong to the loop of the
consumer reading them, which is the loop async_to_sync finds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0


class _LayerLoop:
    """An event loop on a daemon thread, started on first use and again in a forked child (a fork
    copies the loop object but not its thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="channel-layer-loop", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_layer_loop = _LayerLoop()


def _send_now(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if isinstance(layer, InMemoryChannelLayer):
            async_to_sync(layer.group_send)(group, message)
        else:
            _layer_loop.run(layer.group_send(group, message), SEND_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a lost live event must never undo a committed write
        # One line, no traceback: with Redis down this happens for every write, and the cause is known.
        log.warning("could not broadcast %s to %s: %s", message.get("event", {}).get("type"), group, exc)


def broadcast_on_commit(group: str, message_type: str, event: dict[str, Any]) -> None:
    """Queue `{"type": message_type, "event": event}` for `group`, sent when the transaction commits."""
    message = {"type": message_type, "event": event}
    transaction.on_commit(lambda: _send_now(group, message))
