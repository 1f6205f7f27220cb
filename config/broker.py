"""The Celery app's broker connections: kombu's Connection with one defect corrected.

When a worker loses Redis, celery (5.7.0) runs `connection.collect()` and then `connection.close()`.
kombu's collect() drops the connection's transport but keeps `_default_channel`; if it could not close
that channel — its pending BRPOP read fails on the dead socket before the channel marks itself closed,
which is what a crashed Redis always causes — the channel stays the default one, bound to a transport
whose client is gone. close() then closes it again, its restore of the unacknowledged tasks builds a
Redis pool from `transport.client.hostname`, and the worker dies: "Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")" (tests/resilience/test_broker_outage.py
reproduces it). After collect() nothing of the old connection may be reused, so we forget the channel
too. The old channel lives on only through the messages that still need it: a task that was running
during the outage acknowledges through it once Redis is back, so it is not delivered a second time.

celery 5.6.3 only collected (no close) and so survived, but its prefork pool forgets which processes are
busy on a reconnect and queued new tasks behind a running one (fixed in 5.7.0): we keep 5.7.0.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection


class BrokerConnection(Connection):
    def collect(self, socket_timeout: float | None = None) -> Any:
        try:
            return super().collect(socket_timeout)
        finally:
            # kombu clears _connection and _transport here but not the channel built on them.
            self._default_channel = None


class BrokerAMQP(AMQP):
    """Celery's AMQP helper (producers, queues, routing) making its connections with BrokerConnection."""

    Connection = BrokerConnection
