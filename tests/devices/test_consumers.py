"""The fleet websocket through the real ASGI stack (origin check, session auth, routing) with Channels'
in-memory layer. test_integration.py repeats the event path with Redis and a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client

from config.asgi import application
from devices import services
from devices.consumers import CLOSE_UNAUTHENTICATED
from devices.models import DeviceStatus

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT_S = 3


def session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def communicator(
    *, cookie: bytes | None = None, origin: bytes = b"http://localhost"
) -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"localhost")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, "/ws/fleet/", headers=headers)


def test_viewer_receives_status_changes_after_commit(viewer_user: Any) -> None:
    device = services.create_device(
        services.DeviceSettings(name="p1", transport="tcp", address="10.0.0.1:5555")
    )
    cookie = session_cookie(viewer_user)

    async def scenario() -> None:
        comm = communicator(cookie=cookie)
        connected, _ = await comm.connect(timeout=TIMEOUT_S)
        assert connected

        def go_offline() -> None:
            with transaction.atomic():
                services.set_status(device.pk, DeviceStatus.OFFLINE, reason="refused")

        await sync_to_async(go_offline)()
        event = await comm.receive_json_from(timeout=TIMEOUT_S)
        assert event["type"] == "device.status"
        assert (event["device"]["id"], event["device"]["status"], event["device"]["status_colour"]) == (
            device.pk,
            "offline",
            "red",
        )
        assert event["counts"]["offline"] == 1
        await comm.disconnect()

    async_to_sync(scenario)()


def test_rolled_back_change_is_never_broadcast(viewer_user: Any) -> None:
    device = services.create_device(
        services.DeviceSettings(name="p1", transport="tcp", address="10.0.0.1:5555")
    )
    cookie = session_cookie(viewer_user)

    async def scenario() -> None:
        comm = communicator(cookie=cookie)
        assert (await comm.connect(timeout=TIMEOUT_S))[0]

        def change_then_fail() -> None:
            try:
                with transaction.atomic():
                    services.set_status(device.pk, DeviceStatus.ONLINE)
                    raise RuntimeError("rolled back")
            except RuntimeError:
                pass

        await sync_to_async(change_then_fail)()
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_anonymous_socket_is_closed_with_4401() -> None:
    async def scenario() -> None:
        comm = communicator()
        connected, _ = await comm.connect(timeout=TIMEOUT_S)
        assert connected  # accepted only to deliver the close code
        closed = await comm.receive_output(timeout=TIMEOUT_S)
        assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
        await comm.wait()

    async_to_sync(scenario)()


def test_foreign_origin_is_refused(viewer_user: Any) -> None:
    cookie = session_cookie(viewer_user)

    async def scenario() -> None:
        comm = communicator(cookie=cookie, origin=b"http://evil.example")
        connected, _ = await comm.connect(timeout=TIMEOUT_S)
        assert not connected
        await comm.wait()

    async_to_sync(scenario)()
