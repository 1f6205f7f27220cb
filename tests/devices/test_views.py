"""Pages and JSON endpoints: who may see and do what (anonymous / viewer / operator), form errors,
filters, the connection test and the device pages' content."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from devices import adb, services
from devices.adb_identity import platform_identity
from devices.models import AvailabilityInterval, Device, DeviceStatus

from .fakes import FakePhone, install_fake_phones

pytestmark = pytest.mark.django_db


@pytest.fixture
def device() -> Device:
    return services.create_device(
        services.DeviceSettings(name="pixel-a", transport="tcp", address="10.0.0.1:5555", tags=("lab-a",))
    )


@pytest.fixture(autouse=True)
def no_probe_enqueue(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    enqueued: list[int] = []
    monkeypatch.setattr("devices.views.enqueue_probe", lambda device_id, queue="": enqueued.append(device_id))
    return enqueued


def read_urls(device: Device) -> list[str]:
    return [
        reverse("devices:fleet"),
        reverse("devices:detail", args=[device.pk]),
        reverse("devices:adb-key"),
    ]


def write_urls(device: Device) -> list[str]:
    return [
        reverse("devices:register"),
        reverse("devices:edit", args=[device.pk]),
        reverse("devices:delete", args=[device.pk]),
    ]


def test_anonymous_is_sent_to_login_everywhere(client: Any, device: Device) -> None:
    for url in [reverse("home"), *read_urls(device), *write_urls(device)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith(reverse("accounts:login")), url
    for url in [reverse("devices:fleet-snapshot")]:
        response = client.get(url)
        assert response.status_code == 401 and response.json()["error"] == "authentication required"
    response = client.post(
        reverse("devices:test-connection"), {"transport": "tcp", "address": "10.0.0.1:5555"}
    )
    assert response.status_code in (401, 403)
    assert client.post(reverse("devices:delete", args=[device.pk])).status_code == 302
    assert Device.objects.filter(pk=device.pk).exists()


def test_login_page_and_static_files_are_open(client: Any) -> None:
    assert client.get(reverse("accounts:login")).status_code == 200


def test_viewer_reads_but_cannot_write(viewer_client: Any, device: Device) -> None:
    for url in read_urls(device):
        assert viewer_client.get(url).status_code == 200, url
    assert viewer_client.get(reverse("devices:fleet-snapshot")).status_code == 200
    for url in write_urls(device):
        assert viewer_client.get(url).status_code == 403, url
        assert viewer_client.post(url, {}).status_code == 403, url
    response = viewer_client.post(
        reverse("devices:test-connection"), {"transport": "tcp", "address": "10.0.0.1:5555"}
    )
    assert response.status_code == 403
    assert Device.objects.filter(pk=device.pk).exists()
    page = viewer_client.get(reverse("devices:fleet")).content.decode()
    assert "Register a phone" not in page and "vera · Viewer" in page


def test_operator_sees_every_page(operator_client: Any, device: Device) -> None:
    for url in [*read_urls(device), *write_urls(device)]:
        assert operator_client.get(url).status_code == 200, url
    page = operator_client.get(reverse("devices:fleet")).content.decode()
    assert "Register a phone" in page and "opal · Operator" in page


def test_register_creates_phone_and_asks_for_a_probe(
    operator_client: Any, no_probe_enqueue: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            reverse("devices:register"),
            {
                "name": "new",
                "transport": "tcp",
                "address": "192.168.1.7:5555",
                "tags": "lab-b, rooted",
                "agent_python": "python3",
                "work_dir": "/sdcard/fedfleet",
            },
        )
    created = Device.objects.get(name="new")
    assert response.status_code == 302 and response.url == reverse("devices:detail", args=[created.pk])
    assert created.work_dir == "/sdcard/fedfleet/"
    assert no_probe_enqueue == [created.pk]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("192.168.1.7", "The port is missing"),
        ("192.168.1.7:70000", "out of range (1-65535)"),
        ("192.168.1.7:5555;reboot", "shell metacharacters (;)"),
        ("10.0.0.1:5555", "already registered as &#x27;pixel-a&#x27;"),
    ],
)
def test_register_errors_are_clear(operator_client: Any, device: Device, address: str, message: str) -> None:
    response = operator_client.post(
        reverse("devices:register"),
        {
            "name": "other",
            "transport": "tcp",
            "address": address,
            "agent_python": "python3",
            "work_dir": "/data/local/tmp/fedfleet/",
        },
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Device.objects.count() == 1


def test_register_duplicate_name_and_bad_agent(operator_client: Any, device: Device) -> None:
    response = operator_client.post(
        reverse("devices:register"),
        {
            "name": "pixel-a",
            "transport": "tcp",
            "address": "10.0.0.9:5555",
            "agent_python": "python3; reboot",
            "work_dir": "tmp",
        },
    )
    errors = response.context["form"].errors
    assert "already registered" in errors["name"][0]
    assert "not allowed" in errors["agent_python"][0]
    assert "absolute path" in errors["work_dir"][0]


def test_edit_changes_settings_and_a_new_address_resets_status(operator_client: Any, device: Device) -> None:
    services.set_status(device.pk, DeviceStatus.ONLINE)
    response = operator_client.post(
        reverse("devices:edit", args=[device.pk]),
        {
            "name": "pixel-a",
            "transport": "tcp",
            "address": "10.0.0.2:5555",
            "tags": "",
            "agent_python": "python3",
            "work_dir": "/data/local/tmp/fedfleet/",
        },
    )
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.address == "10.0.0.2:5555" and device.status == DeviceStatus.UNKNOWN
    assert list(device.tags.all()) == []


def test_delete_confirms_then_removes(operator_client: Any, device: Device) -> None:
    assert b"Remove pixel-a?" in operator_client.get(reverse("devices:delete", args=[device.pk])).content
    response = operator_client.post(reverse("devices:delete", args=[device.pk]))
    assert response.status_code == 302 and not Device.objects.exists()


def test_delete_refused_while_leased(operator_client: Any, device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(lease_job_id=5)
    response = operator_client.post(reverse("devices:delete", args=[device.pk]), follow=True)
    assert "in use by job 5" in response.content.decode()
    assert Device.objects.filter(pk=device.pk).exists()


def test_snapshot_filters_by_status_and_tag(viewer_client: Any, device: Device) -> None:
    other = services.create_device(
        services.DeviceSettings(name="pixel-b", transport="tcp", address="10.0.0.3:5555", tags=("lab-b",))
    )
    services.set_status(other.pk, DeviceStatus.ONLINE)
    url = reverse("devices:fleet-snapshot")
    assert [d["name"] for d in viewer_client.get(url).json()["devices"]] == ["pixel-a", "pixel-b"]
    assert [d["name"] for d in viewer_client.get(url, {"status": "online"}).json()["devices"]] == ["pixel-b"]
    assert [d["name"] for d in viewer_client.get(url, {"tag": "LAB-A"}).json()["devices"]] == ["pixel-a"]
    body = viewer_client.get(url, {"tag": "lab-a", "status": "online"}).json()
    assert body["devices"] == [] and body["counts"]["online"] == 1 and body["counts"]["unknown"] == 1
    assert viewer_client.get(url, {"status": "bogus"}).status_code == 400
    page = viewer_client.get(reverse("devices:fleet"), {"tag": "lab-b"}).content.decode()
    assert "pixel-b" in page and "pixel-a" not in page


def test_detail_page_has_charts_and_history(viewer_client: Any, device: Device) -> None:
    services.set_status(device.pk, DeviceStatus.ONLINE)
    services.set_status(device.pk, DeviceStatus.OFFLINE, reason="refused")
    response = viewer_client.get(reverse("devices:detail", args=[device.pk]))
    page = response.content.decode()
    assert 'id="battery-figure"' in page and 'id="availability-figure"' in page
    assert "vendor/plotly.min.js" in page
    timeline = response.context["availability_figure"]
    assert {trace["name"] for trace in timeline["data"]} == {"Unknown", "Online", "Offline"}
    assert AvailabilityInterval.objects.filter(device=device).count() == 3
    assert (
        viewer_client.get(reverse("devices:detail", args=[device.pk]), {"hours": "nonsense"}).status_code
        == 200
    )


def test_adb_key_page_shows_the_platform_key(viewer_client: Any) -> None:
    identity = platform_identity()
    page = viewer_client.get(reverse("devices:adb-key")).content.decode()
    assert identity.fingerprint_md5 in page
    assert identity.public_key.split()[0] in page
    assert "/data/misc/adb/adb_keys" in page


def test_connection_check_reports_each_outcome(operator_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_phones(
        monkeypatch,
        {
            "10.0.0.1:5555": FakePhone(),
            "10.0.0.2:5555": FakePhone(connect_error=adb.DeviceUnauthorized("not accepted")),
        },
    )
    url = reverse("devices:test-connection")
    online = operator_client.post(url, {"transport": "tcp", "address": "10.0.0.1:5555"}).json()
    assert online["result"] == "online" and "Google Pixel 6, Android 14" in online["message"]
    locked = operator_client.post(url, {"transport": "tcp", "address": "10.0.0.2:5555"}).json()
    assert locked["result"] == "unauthorized"
    assert locked["fingerprint"] == platform_identity().fingerprint_md5
    assert any("adb_keys" in step for step in locked["how_to"])
    offline = operator_client.post(url, {"transport": "tcp", "address": "10.0.0.3:5555"}).json()
    assert offline["result"] == "offline" and "refused" in offline["message"]
    invalid = operator_client.post(url, {"transport": "tcp", "address": "10.0.0.3:5555|sh"})
    assert invalid.status_code == 400 and "metacharacters" in json.dumps(invalid.json())
    assert operator_client.get(url).status_code == 405


def test_forbidden_and_missing_pages_use_the_layout(viewer_client: Any) -> None:
    forbidden = viewer_client.get(reverse("devices:register"))
    assert (
        forbidden.status_code == 403
        and b"Operators" in forbidden.content
        and b"FedFleet" in forbidden.content
    )
    missing = viewer_client.get(reverse("devices:detail", args=[424242]))
    assert missing.status_code == 404 and b"Back to the fleet" in missing.content
