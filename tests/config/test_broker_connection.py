"""config/broker.py: after collect(), a broker connection keeps no channel of the transport it dropped.
(The worker-level proof, a real Redis SIGKILLed under a running task: tests/resilience/.)"""

from __future__ import annotations

from kombu import Connection

from config.broker import BrokerConnection
from config.celery import app


def test_the_celery_app_makes_its_connections_with_the_corrected_class() -> None:
    assert app.amqp.Connection is BrokerConnection
    with app.connection_for_read() as conn:
        assert isinstance(conn, BrokerConnection)
        assert isinstance(conn.clone(), BrokerConnection)  # kombu's pools clone it


def test_kombu_still_keeps_the_stale_channel_after_collect() -> None:
    """The defect config/broker.py corrects. If this fails, kombu fixed it: drop the override."""
    conn = Connection("memory://")
    stale = conn.default_channel
    conn.collect()
    # Kept although its transport is gone: close() after collect() closes it a second time.
    assert conn._default_channel is stale and conn.transport is not stale.connection
    conn.close()


def test_after_collect_the_default_channel_is_a_new_one_on_a_live_transport() -> None:
    conn = BrokerConnection("memory://")
    stale = conn.default_channel
    conn.collect()
    assert conn._default_channel is None
    conn.close()  # what celery 5.7 does after collect(): nothing of the dropped transport is left to close
    fresh = conn.default_channel
    assert fresh is not stale and fresh.connection is not None
    assert fresh.connection.client is conn
    conn.close()
