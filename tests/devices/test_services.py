"""devices.services: registration, status/availability bookkeeping, telemetry history, probe claims, and
the fleet events they emit after commit."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from devices import services
from devices.models import AvailabilityInterval, Device, DeviceStatus, TelemetrySample
from devices.telemetry import BatteryState, DeviceProperties, MemoryInfo, Telemetry

pytestmark = pytest.mark.django_db


def settings_for(name: str = "p1", address: str = "10.0.0.1:5555", **extra: Any) -> services.DeviceSettings:
    return services.DeviceSettings(name=name, transport="tcp", address=address, **extra)


def telemetry(level: int = 50, charging: bool = False) -> Telemetry:
    return Telemetry(
        properties=DeviceProperties(
            manufacturer="Google", model="Pixel 6", android_release="14", sdk_int=34, abi="arm64-v8a"
        ),
        battery=BatteryState(
            level_percent=level, charging=charging, plugged="", temperature_c=30.0, voltage_mv=4000
        ),
        memory=MemoryInfo(total_kb=8 * 1024 * 1024, available_kb=3 * 1024 * 1024),
        cpu_cores=8,
    )


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Fleet events in the order they would be broadcast (after commit)."""
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "config.broadcast._send_now",
        lambda group, message: group == "fleet" and sent.append(message["event"]),
    )
    return sent


def test_create_device_normalises_and_opens_unknown_interval(
    django_capture_on_commit_callbacks: Any, events: list
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        device = services.create_device(
            settings_for(address="LOCALHOST:05555", tags=("Lab-A", "lab-a", "rooted"))
        )
    assert device.address == "localhost:5555"
    assert device.status == DeviceStatus.UNKNOWN
    assert sorted(device.tags.values_list("name", flat=True)) == ["lab-a", "rooted"]
    interval = AvailabilityInterval.objects.get(device=device)
    assert interval.status == DeviceStatus.UNKNOWN and interval.ended_at is None
    assert [e["type"] for e in events] == ["device.added"]
    assert events[0]["counts"]["unknown"] == 1


def test_create_device_refuses_bad_input() -> None:
    with pytest.raises(ValidationError) as excinfo:
        services.create_device(settings_for(address="10.0.0.1:5555;reboot"))
    assert "metacharacters" in str(excinfo.value)
    services.create_device(settings_for())
    with pytest.raises(ValidationError):
        services.create_device(settings_for(name="other", address="10.0.0.1:5555"))
    with pytest.raises(ValidationError):
        services.create_device(settings_for(name="p2", address="10.0.0.2:5555", tags=("bad tag!",)))


def test_set_status_closes_and_opens_intervals(django_capture_on_commit_callbacks: Any, events: list) -> None:
    device = services.create_device(settings_for())
    with django_capture_on_commit_callbacks(execute=True):
        services.set_status(device.pk, DeviceStatus.ONLINE)
        services.set_status(device.pk, DeviceStatus.ONLINE)  # no change: no new interval, no event
        services.set_status(device.pk, DeviceStatus.OFFLINE, reason="connection refused")
    intervals = list(AvailabilityInterval.objects.filter(device=device).order_by("started_at", "pk"))
    assert [i.status for i in intervals] == ["unknown", "online", "offline"]
    assert all(i.ended_at is not None for i in intervals[:-1]) and intervals[-1].ended_at is None
    assert intervals[1].ended_at >= intervals[1].started_at
    status_events = [e for e in events if e["type"] == "device.status"]
    assert [e["device"]["status"] for e in status_events] == ["online", "offline"]
    assert status_events[-1]["device"]["status_reason"] == "connection refused"
    assert status_events[-1]["counts"]["offline"] == 1
    device.refresh_from_db()
    assert device.last_seen_at is not None and device.status_reason == "connection refused"


def test_events_wait_for_commit(events: list) -> None:
    device = services.create_device(settings_for())
    services.set_status(device.pk, DeviceStatus.ONLINE)
    # Inside the test's transaction nothing was committed, so nothing may have been broadcast.
    assert events == []


def test_record_telemetry_updates_device_and_rate_limits_samples(
    settings: Any, django_capture_on_commit_callbacks: Any, events: list
) -> None:
    settings.FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S = 60
    device = services.create_device(settings_for())
    start = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        services.record_telemetry(device.pk, telemetry(level=50), at=start)
        services.record_telemetry(device.pk, telemetry(level=49), at=start + dt.timedelta(seconds=10))
        services.record_telemetry(device.pk, telemetry(level=49), at=start + dt.timedelta(seconds=20))
        services.record_telemetry(device.pk, telemetry(level=48), at=start + dt.timedelta(seconds=61))
    device.refresh_from_db()
    assert (device.battery_level, device.model, device.ram_total_mb, device.cpu_cores) == (
        48,
        "Pixel 6",
        8192,
        8,
    )
    assert list(TelemetrySample.objects.filter(device=device).values_list("battery_level", flat=True)) == [
        50,
        48,
    ]
    # Only visible changes are broadcast (50 -> 49 -> 48; the repeated 49 is not).
    assert [e["device"]["battery_level"] for e in events if e["type"] == "device.telemetry"] == [50, 49, 48]


def test_missing_telemetry_keeps_last_known_values() -> None:
    device = services.create_device(settings_for())
    services.record_telemetry(device.pk, telemetry(level=70))
    services.record_telemetry(
        device.pk, Telemetry(properties=DeviceProperties(), battery=None, memory=None, cpu_cores=None)
    )
    device.refresh_from_db()
    assert (device.battery_level, device.model) == (70, "Pixel 6")


def test_purge_old_telemetry(settings: Any) -> None:
    settings.FEDFLEET_TELEMETRY_RETENTION_DAYS = 7
    device = services.create_device(settings_for())
    now = timezone.now()
    TelemetrySample.objects.create(device=device, recorded_at=now - dt.timedelta(days=8), battery_level=1)
    TelemetrySample.objects.create(device=device, recorded_at=now - dt.timedelta(days=1), battery_level=2)
    AvailabilityInterval.objects.create(
        device=device,
        status="offline",
        started_at=now - dt.timedelta(days=10),
        ended_at=now - dt.timedelta(days=9),
    )
    assert services.purge_old_telemetry(now=now) == 2
    assert list(TelemetrySample.objects.values_list("battery_level", flat=True)) == [2]
    assert AvailabilityInterval.objects.filter(ended_at__isnull=True).count() == 1  # the open one stays


def test_probe_claim_is_exclusive_until_released_or_stale() -> None:
    device = services.create_device(settings_for())
    now = timezone.now()
    first = services.claim_probe(device.pk, now=now)
    assert first is not None
    assert services.claim_probe(device.pk, now=now + dt.timedelta(seconds=5)) is None
    assert [pk for pk, _ in services.probe_candidates(now=now)] == []
    # A claim older than the stale limit belongs to a dead worker and can be taken over ...
    later = now + services.PROBE_CLAIM_STALE_AFTER + dt.timedelta(seconds=1)
    second = services.claim_probe(device.pk, now=later)
    assert second == later
    # ... and the dead worker's late release must not free the new claim.
    services.release_probe(device.pk, first)
    assert services.claim_probe(device.pk, now=later) is None
    services.release_probe(device.pk, second)
    assert services.claim_probe(device.pk, now=later) is not None


def test_leased_phone_is_not_probed_and_keeps_busy() -> None:
    device = services.create_device(settings_for())
    services.set_status(device.pk, DeviceStatus.BUSY, reason="leased")
    Device.objects.filter(pk=device.pk).update(lease_job_id=42)
    assert services.claim_probe(device.pk) is None
    assert services.probe_candidates() == []
    services.apply_probe_result(device.pk, DeviceStatus.ONLINE, telemetry=telemetry(level=33))
    device.refresh_from_db()
    assert device.status == DeviceStatus.BUSY and device.battery_level == 33


def test_register_or_update_device_is_idempotent() -> None:
    first = services.register_or_update_device(
        name="vphone-01", transport="tcp", address="127.0.0.1:15555", tags=["virtual"]
    )
    again = services.register_or_update_device(
        name="vphone-01",
        transport="tcp",
        address="127.0.0.1:15555",
        tags=["virtual"],
        agent_python="/usr/bin/python3",
    )
    moved = services.register_or_update_device(
        name="vphone-01", transport="tcp", address="127.0.0.1:25555", tags=["virtual"]
    )
    assert first.pk == again.pk == moved.pk
    assert Device.objects.count() == 1
    moved.refresh_from_db()
    assert moved.address == "127.0.0.1:25555" and moved.agent_python == "python3"
    assert moved.status == DeviceStatus.UNKNOWN  # a new address is a phone not yet probed
    services.register_or_update_device(name="vphone-02", transport="tcp", address="127.0.0.1:15556")
    with pytest.raises(ValidationError, match="belongs to another phone"):
        services.register_or_update_device(name="vphone-02", transport="tcp", address="127.0.0.1:25555")


def test_remove_device_refuses_leased_phone(django_capture_on_commit_callbacks: Any, events: list) -> None:
    device = services.create_device(settings_for())
    Device.objects.filter(pk=device.pk).update(lease_job_id=7)
    with pytest.raises(services.DeviceInUse):
        services.remove_device(device.pk)
    Device.objects.filter(pk=device.pk).update(lease_job_id=None)
    with django_capture_on_commit_callbacks(execute=True):
        services.remove_device(device.pk)
    assert not Device.objects.exists()
    assert events[-1]["type"] == "device.removed" and events[-1]["device"] == {"id": device.pk}


def test_fleet_row_and_counts() -> None:
    device = services.create_device(settings_for(tags=("b", "a")))
    row = services.fleet_row(Device.objects.prefetch_related("tags").get(pk=device.pk))
    assert row["tags"] == ["a", "b"] and row["status_colour"] == "grey" and row["status_label"] == "Unknown"
    assert services.status_counts() == {
        "online": 0, "busy": 0, "unauthorized": 0, "offline": 0, "unknown": 1, "retired": 0,
    }  # fmt: skip
