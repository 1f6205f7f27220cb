"""Integration: real Redis, real Celery workers (subprocesses), real virtual phones speaking ADB, real
Daphne. Nothing here is faked: the probe path is beat's fan-out -> Redis -> worker -> ADB -> database ->
channel layer -> websocket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from devices import services
from devices.models import Device, DeviceStatus
from devices.tasks import probe_device, probe_fleet
from tests.conftest import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
STATUS_TIMEOUT_S = 30.0


def register(name: str, address: str) -> Device:
    return services.create_device(services.DeviceSettings(name=name, transport="tcp", address=address))


def statuses() -> dict[str, str]:
    return dict(Device.objects.values_list("name", "status"))


def wait_for_statuses(expected: dict[str, str]) -> None:
    def reached() -> bool:
        current = statuses()
        return all(current.get(name) == status for name, status in expected.items())

    try:
        wait_until(reached, timeout_s=STATUS_TIMEOUT_S, interval_s=0.2, what=f"statuses {expected}")
    except AssertionError:
        raise AssertionError(f"expected {expected}, have {statuses()}") from None


def test_probe_marks_online_unauthorized_and_offline(
    transactional_db: None, celery_devices_worker: Any, virtual_phones: Any
) -> None:
    trusting = virtual_phones(2, seed=3)
    distrusting = virtual_phones(1, authorized=False, seed=4)
    nobody_port = free_port()  # nothing listens here
    for index, phone in enumerate(trusting.phones):
        register(f"trusting-{index}", phone.address)
    register("distrusting", distrusting.phones[0].address)
    register("nobody", f"127.0.0.1:{nobody_port}")

    probe_fleet.delay()  # what beat sends every 10 s

    wait_for_statuses(
        {"trusting-0": "online", "trusting-1": "online", "distrusting": "unauthorized", "nobody": "offline"}
    )
    online = Device.objects.get(name="trusting-0")
    assert online.model == trusting.phones[0].model
    assert online.battery_level is not None and online.cpu_cores and online.ram_total_mb
    assert online.android_release and online.sdk_int
    assert online.telemetry_samples.count() == 1
    assert "accepted" in Device.objects.get(name="distrusting").status_reason
    assert "refused" in Device.objects.get(name="nobody").status_reason.lower()
    # Every status change opened an availability interval.
    assert list(online.availability.values_list("status", flat=True)) == ["unknown", "online"]


def test_a_claimed_phone_is_not_probed_twice(
    transactional_db: None, celery_devices_worker: Any, virtual_phones: Any
) -> None:
    lab = virtual_phones(1, seed=5)
    device = register("claimed", lab.phones[0].address)
    in_flight = services.claim_probe(device.pk)  # as if another worker were probing it right now
    assert in_flight is not None
    results = [probe_device.apply_async(args=[device.pk], ignore_result=False) for _ in range(3)]
    assert [r.get(timeout=STATUS_TIMEOUT_S) for r in results] == ["skipped"] * 3
    assert statuses()["claimed"] == "unknown"
    services.release_probe(device.pk, in_flight)
    assert (
        probe_device.apply_async(args=[device.pk], ignore_result=False).get(timeout=STATUS_TIMEOUT_S)
        == "online"
    )
    assert statuses()["claimed"] == "online"


def _session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def test_websocket_hears_a_phone_go_offline(
    transactional_db: None, celery_devices_worker: Any, virtual_phones: Any, viewer_user: Any
) -> None:
    from config.asgi import application

    lab = virtual_phones(1, seed=6)
    device = register("leaving", lab.phones[0].address)
    probe_fleet.delay()
    wait_for_statuses({"leaving": "online"})
    cookie = _session_cookie(viewer_user)

    async def scenario() -> dict[str, Any]:
        comm = WebsocketCommunicator(
            application, "/ws/fleet/", headers=[(b"origin", b"http://localhost"), (b"cookie", cookie)]
        )
        connected, _ = await comm.connect(timeout=5)
        assert connected
        lab.stop()  # the phone vanishes
        probe_fleet.delay()
        try:
            while True:  # telemetry events may come first; wait for the status change
                event = await comm.receive_json_from(timeout=STATUS_TIMEOUT_S)
                if event["type"] == "device.status" and event["device"]["id"] == device.pk:
                    return event
        finally:
            await comm.disconnect()

    event = async_to_sync(scenario)()
    assert event["device"]["status"] == DeviceStatus.OFFLINE
    assert event["device"]["status_colour"] == "red"
    assert event["counts"]["offline"] >= 1
    assert statuses()["leaving"] == "offline"


def _http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_anonymous_http_and_websocket_are_refused_by_daphne(
    transactional_db: None, daphne_server: str
) -> None:
    import asyncio

    import websockets

    status, headers, _ = _http_get(f"{daphne_server}/devices/")
    assert status == 302 and headers["Location"].startswith("/accounts/login/")
    status, _, body = _http_get(f"{daphne_server}/devices/snapshot.json")
    assert status == 401 and json.loads(body) == {"error": "authentication required"}
    status, headers, _ = _http_get(f"{daphne_server}/api/devices/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Token")
    status, _, _ = _http_get(f"{daphne_server}/accounts/login/")
    assert status == 200

    host = urlsplit(daphne_server).netloc
    ws_url = f"ws://{host}/ws/fleet/"

    async def anonymous_close_code() -> int | None:
        async with websockets.connect(ws_url, origin=f"http://{host}", open_timeout=10) as socket:
            try:
                await asyncio.wait_for(socket.recv(), timeout=10)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    async def foreign_origin_refused() -> bool:
        try:
            async with websockets.connect(ws_url, origin="http://evil.example", open_timeout=10):
                return False
        except websockets.InvalidStatus as refused:
            return refused.response.status_code == 403

    assert asyncio.run(anonymous_close_code()) == 4401
    assert asyncio.run(foreign_origin_refused())
