"""The devices REST API: the same validation and permissions as the pages; token or session auth."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import services
from devices.models import Device

pytestmark = pytest.mark.django_db

LIST = "/api/devices/"


@pytest.fixture(autouse=True)
def no_probe_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("devices.api.enqueue_probe", lambda *args, **kwargs: None)


@pytest.fixture
def device() -> Device:
    return services.create_device(
        services.DeviceSettings(name="pixel-a", transport="tcp", address="10.0.0.1:5555", tags=("lab-a",))
    )


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_anonymous_gets_401_not_a_redirect(device: Device) -> None:
    client = APIClient()
    for response in (
        client.get(LIST),
        client.get(f"{LIST}{device.pk}/"),
        client.post(LIST, {"name": "x", "address": "10.0.0.2:5555"}, format="json"),
        client.delete(f"{LIST}{device.pk}/"),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Token")
    assert Device.objects.count() == 1


def test_viewer_token_reads_only(viewer_user: Any, device: Device) -> None:
    client = token_client(viewer_user)
    listing = client.get(LIST).json()
    assert listing["count"] == 1 and listing["results"][0]["tags"] == ["lab-a"]
    assert client.get(f"{LIST}{device.pk}/").json()["address"] == "10.0.0.1:5555"
    assert client.post(LIST, {"name": "x", "address": "10.0.0.2:5555"}, format="json").status_code == 403
    assert client.delete(f"{LIST}{device.pk}/").status_code == 403
    assert Device.objects.count() == 1


def test_operator_creates_and_deletes(operator_user: Any) -> None:
    client = token_client(operator_user)
    response = client.post(
        LIST, {"name": "new", "address": "LocalHost:05555", "tags": ["Lab-B"]}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["address"], body["tags"], body["status"], body["work_dir"]) == (
        "localhost:5555",
        ["lab-b"],
        "unknown",
        "/data/local/tmp/fedfleet/",
    )
    deleted = client.delete(f"{LIST}{body['id']}/")
    assert deleted.status_code == 200 and deleted.json()["result"] == "deleted"  # no history: really gone
    assert not Device.objects.exists()


def test_api_validation_matches_the_form(operator_user: Any, device: Device) -> None:
    client = token_client(operator_user)
    response = client.post(
        LIST, {"name": "pixel-a", "address": "10.0.0.1:5555;id", "agent_python": "py && id"}, format="json"
    )
    assert response.status_code == 400
    errors = response.json()
    assert "already registered" in errors["name"][0]
    assert "shell metacharacters (;)" in errors["address"][0]
    assert "not allowed" in errors["agent_python"][0]
    duplicate = client.post(LIST, {"name": "other", "address": "10.0.0.1:5555"}, format="json")
    assert "already registered as 'pixel-a'" in duplicate.json()["address"][0]
    assert client.post(LIST, {"name": "p", "address": "10.0.0.9:99999"}, format="json").json()["address"] == [
        "The port 99999 is out of range (1-65535)."
    ]


def test_read_only_fields_cannot_be_set(operator_user: Any) -> None:
    client = token_client(operator_user)
    body = client.post(
        LIST, {"name": "n", "address": "10.0.0.4:5555", "status": "online", "lease_job_id": 9}, format="json"
    ).json()
    assert body["status"] == "unknown" and body["lease_job_id"] is None


def test_api_filters_are_the_fleet_filters(viewer_user: Any, device: Device) -> None:
    services.create_device(
        services.DeviceSettings(name="pixel-b", transport="tcp", address="10.0.0.2:5555", tags=("lab-b",))
    )
    client = token_client(viewer_user)
    assert [d["name"] for d in client.get(LIST, {"tag": "lab-b"}).json()["results"]] == ["pixel-b"]
    assert client.get(LIST, {"status": "online"}).json()["count"] == 0


def test_session_auth_needs_csrf_for_writes(operator_user: Any) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator_user)
    assert client.get(LIST).status_code == 200
    assert client.post(LIST, {"name": "n", "address": "10.0.0.4:5555"}, format="json").status_code == 403


def test_delete_leased_phone_conflicts(operator_user: Any, device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(lease_job_id=4)
    response = token_client(operator_user).delete(f"{LIST}{device.pk}/")
    assert response.status_code == 409 and "job 4" in response.json()["detail"]
