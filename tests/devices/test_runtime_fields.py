"""A phone's runtime settings (runtime, agent port, agent secret): validated the same in the form, the
API and the service; every phone gets its own secret, which only operators see."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import services
from devices.forms import DeviceForm
from devices.models import Device, Runtime

pytestmark = pytest.mark.django_db

LIST = "/api/devices/"


@pytest.fixture(autouse=True)
def no_probe_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("devices.api.enqueue_probe", lambda *args, **kwargs: None)


def settings_for(name: str, port: int, **changes: Any) -> services.DeviceSettings:
    return services.DeviceSettings(name=name, transport="tcp", address=f"10.0.0.9:{port}", **changes)


def test_every_phone_gets_its_own_secret_and_defaults() -> None:
    first = services.create_device(settings_for("a", 5001))
    second = services.create_device(settings_for("b", 5002))
    assert first.runtime == Runtime.EXEC and first.agent_port == 7000
    assert len(first.agent_secret) >= 16 and first.agent_secret != second.agent_secret


def test_blank_secret_keeps_the_phones_and_a_given_one_replaces_it() -> None:
    device = services.create_device(settings_for("a", 5001, runtime="app", agent_port=7100))
    kept = services.update_device(device.pk, settings_for("a", 5001, runtime="app", agent_port=7100))
    assert kept.agent_secret == device.agent_secret and kept.runtime == "app" and kept.agent_port == 7100
    replaced = services.update_device(
        device.pk, settings_for("a", 5001, runtime="resident", agent_secret="a-typed-secret-0123")
    )
    assert replaced.agent_secret == "a-typed-secret-0123" and replaced.runtime == "resident"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"runtime": "magic"}, "runtime", "Select a valid choice"),
        ({"agent_port": "0"}, "agent_port", "greater than or equal to 1"),
        ({"agent_port": "70000"}, "agent_port", "less than or equal to 65535"),
        ({"agent_secret": "short"}, "agent_secret", "16-256 printable characters"),
        ({"agent_secret": "has a space in it here"}, "agent_secret", "without spaces"),
    ],
)
def test_the_form_refuses_bad_runtime_settings(changes: dict[str, str], field: str, message: str) -> None:
    data = {"name": "x", "transport": "tcp", "address": "10.0.0.3:5555", "agent_python": "python3"}
    data["work_dir"] = "/sdcard/fedfleet"
    form = DeviceForm(data={**data, **changes})
    assert not form.is_valid()
    assert message in " ".join(form.errors[field])


def test_the_service_refuses_a_bad_secret_too() -> None:
    with pytest.raises(ValidationError, match="agent_secret"):
        services.create_device(settings_for("a", 5001, agent_secret="x y"))


def test_only_operators_see_the_secret_in_the_api(operator_user: Any, viewer_user: Any) -> None:
    operator = APIClient()
    operator.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator_user).key}")
    created = operator.post(
        LIST,
        {"name": "stock", "address": "10.0.0.4:5555", "runtime": "app", "agent_port": 7001},
        format="json",
    )
    assert created.status_code == 201, created.json()
    device = Device.objects.get(name="stock")
    assert device.runtime == "app" and device.agent_port == 7001
    assert operator.get(f"{LIST}{device.pk}/").json()["agent_secret"] == device.agent_secret
    viewer = APIClient()
    viewer.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=viewer_user).key}")
    shown = viewer.get(f"{LIST}{device.pk}/").json()
    assert shown["runtime"] == "app" and "agent_secret" not in shown
    bad = operator.post(LIST, {"name": "bad", "address": "10.0.0.5:5555", "runtime": "x"}, format="json")
    assert bad.status_code == 400 and "runtime" in bad.json()


def test_the_migration_gives_existing_phones_distinct_secrets() -> None:
    services.create_device(settings_for("a", 5001))
    services.create_device(settings_for("b", 5002))
    Device.objects.update(agent_secret="the-same-for-every-row")  # what AddField's one default does
    migration = importlib.import_module("devices.migrations.0004_device_runtime")
    migration.give_each_phone_its_own_secret(django_apps, None)
    secrets = list(Device.objects.values_list("agent_secret", flat=True))
    assert len(set(secrets)) == 2 and "the-same-for-every-row" not in secrets


def test_the_device_page_shows_the_runtime_and_the_command_to_operators_only(
    operator_user: Any, viewer_user: Any
) -> None:
    from django.test import Client  # noqa: PLC0415

    operator, viewer = Client(), Client()
    operator.force_login(operator_user)
    viewer.force_login(viewer_user)
    device = services.create_device(
        settings_for(
            "stock", 5009, runtime="app", agent_secret="detail-page-secret-0123", work_dir="/sdcard/fedfleet"
        )
    )
    page = operator.get(f"/devices/{device.pk}/").content.decode()
    assert 'data-testid="runtime">app<' in page
    assert "echo detail-page-secret-0123 &gt; ~/.fedfleet-agent-secret" in page
    shown = viewer.get(f"/devices/{device.pk}/").content.decode()
    assert 'data-testid="runtime">app<' in shown and "detail-page-secret-0123" not in shown
    fleet = viewer.get("/devices/").content.decode()
    assert "detail-page-secret-0123" not in fleet and 'id="app-agents"' not in fleet
    assert "detail-page-secret-0123" in operator.get("/devices/").content.decode()
