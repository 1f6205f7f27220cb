"""Health-probe tasks against a fake ADB seam: status mapping, telemetry, claims, fan-out routing.
(The same paths run against real virtual phones and real workers in test_integration.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from devices import adb, services, tasks
from devices.models import Device

from .fakes import FakePhone, install_fake_phones

pytestmark = pytest.mark.django_db


def make_device(name: str, address: str, **extra: Any) -> Device:
    return services.create_device(
        services.DeviceSettings(name=name, transport="tcp", address=address, **extra)
    )


def test_probe_marks_online_with_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    phone = FakePhone()
    install_fake_phones(monkeypatch, {"10.0.0.1:5555": phone})
    device = make_device("p1", "10.0.0.1:5555")
    assert tasks.probe_device(device.pk) == "online"
    device.refresh_from_db()
    assert (device.status, device.model, device.battery_level, device.charging) == (
        "online",
        "Pixel 6",
        64,
        True,
    )
    assert (device.ram_total_mb, device.cpu_cores, device.android_release, device.sdk_int) == (
        7618,
        8,
        "14",
        34,
    )
    assert device.probe_claimed_at is None  # released
    assert "getprop ro.product.model" in phone.commands


def test_probe_marks_unauthorized_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_phones(
        monkeypatch,
        {
            "10.0.0.2:5555": FakePhone(
                connect_error=adb.DeviceUnauthorized("10.0.0.2:5555 has not accepted this platform's key")
            ),
            "10.0.0.3:5555": FakePhone(connect_error=adb.DeviceTimeout("no answer within 3 s")),
        },
    )
    locked = make_device("locked", "10.0.0.2:5555")
    silent = make_device("silent", "10.0.0.3:5555")
    gone = make_device("gone", "10.0.0.4:5555")
    assert tasks.probe_device(locked.pk) == "unauthorized"
    assert tasks.probe_device(silent.pk) == "offline"
    assert tasks.probe_device(gone.pk) == "offline"
    statuses = dict(Device.objects.values_list("name", "status"))
    assert statuses == {"locked": "unauthorized", "silent": "offline", "gone": "offline"}
    assert "not accepted" in Device.objects.get(name="locked").status_reason
    assert "Connection refused" in Device.objects.get(name="gone").status_reason


def test_unknown_commands_only_leave_telemetry_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_phones(
        monkeypatch, {"10.0.0.5:5555": FakePhone(outputs={"getprop ro.product.model": "Board\n"})}
    )
    device = make_device("board", "10.0.0.5:5555")
    assert tasks.probe_device(device.pk) == "online"
    device.refresh_from_db()
    assert (device.model, device.battery_level, device.cpu_cores) == ("Board", None, None)


def test_overlapping_probe_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    phone = FakePhone()
    install_fake_phones(monkeypatch, {"10.0.0.1:5555": phone})
    device = make_device("p1", "10.0.0.1:5555")
    claimed_at = services.claim_probe(device.pk)  # another worker is probing right now
    assert tasks.probe_device(device.pk) == "skipped"
    assert phone.connects == 0
    services.release_probe(device.pk, claimed_at)
    assert tasks.probe_device(device.pk) == "online"


def test_probe_of_removed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tasks.probe_device(999999) == "skipped"  # nothing to claim


def test_probe_releases_claim_when_probe_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    device = make_device("p1", "10.0.0.1:5555")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(tasks, "probe_address", boom)
    with pytest.raises(RuntimeError):
        tasks.probe_device(device.pk)
    device.refresh_from_db()
    assert device.probe_claimed_at is None


def test_probe_fleet_fans_out_to_each_phones_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[list[int], dict[str, Any]]] = []
    monkeypatch.setattr(
        tasks.probe_device, "apply_async", lambda args, **options: sent.append((args, options))
    )
    shared = make_device("shared", "10.0.0.1:5555")
    usb_host = make_device("usb", "10.0.0.2:5555", worker_queue="devices.lab-pc-2")
    leased = make_device("leased", "10.0.0.3:5555")
    Device.objects.filter(pk=leased.pk).update(lease_job_id=3)
    busy_probe = make_device("probing", "10.0.0.4:5555")
    services.claim_probe(busy_probe.pk, now=timezone.now())
    assert tasks.probe_fleet() == 2
    routed = {args[0]: options["queue"] for args, options in sent}
    assert routed == {shared.pk: "devices", usb_host.pk: "devices.lab-pc-2"}
    assert all(options["expires"] > 0 for _, options in sent)


def test_task_routes_and_queues() -> None:
    from config.celery import app, route_by_module

    assert route_by_module("devices.tasks.probe_device", [], {}, {}) == {"queue": "devices"}
    assert route_by_module("training.tasks.aggregate", [], {}, {}) == {"queue": "training"}
    assert {q.name for q in app.conf.task_queues} == {"devices", "training"}
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"]
    assert app.conf.beat_schedule["probe-fleet"]["task"] == "devices.tasks.probe_fleet"
    assert "devices.tasks.probe_fleet" in app.tasks


def test_enqueue_probe_survives_broker_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(tasks.probe_device, "apply_async", broken)
    tasks.enqueue_probe(1)  # logs, does not raise
