"""The one place that writes Device, TelemetrySample and AvailabilityInterval rows, and emits fleet events.

Views, the API, Celery tasks, management commands and the training app call these functions; they never
save those models themselves, so availability intervals stay consistent with statuses and every change
reaches the live fleet page. Writes are short transactions (SQLite serialises writers).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Count, ProtectedError, Q
from django.utils import timezone

from devices.addresses import AddressError, normalise_address
from devices.events import send_fleet_event
from devices.models import (
    DEFAULT_AGENT_PORT,
    DEFAULT_AGENT_PYTHON,
    DEFAULT_WORK_DIR,
    RUNTIME_COLOURS,
    STATUS_COLOURS,
    AvailabilityInterval,
    Device,
    DeviceStatus,
    Tag,
    TelemetrySample,
)
from devices.telemetry import Telemetry
from devices.validators import normalise_work_dir

# A probe claim older than this belongs to a worker that died mid-probe; another probe may take over.
PROBE_CLAIM_STALE_AFTER = dt.timedelta(seconds=60)
_TELEMETRY_FIELDS = (
    "manufacturer",
    "model",
    "android_release",
    "sdk_int",
    "abi",
    "battery_level",
    "charging",
    "battery_temperature_c",
    "ram_total_mb",
    "ram_available_mb",
    "cpu_cores",
    "availability_model",
)


# --- reading: the JSON shape shared by the snapshot endpoint and the events -----------------------------
def fleet_row(device: Device) -> dict[str, Any]:
    """A device as the fleet page shows it (JSON-ready). Tags must be prefetched or are queried here."""
    return {
        "id": device.pk,
        "name": device.name,
        "transport": device.transport,
        "address": device.address,
        "status": device.status,
        "status_label": DeviceStatus(device.status).label,
        "status_colour": STATUS_COLOURS.get(device.status, "grey"),
        "status_reason": device.status_reason,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "android_release": device.android_release,
        "sdk_int": device.sdk_int,
        "battery_level": device.battery_level,
        "charging": device.charging,
        "ram_total_mb": device.ram_total_mb,
        "cpu_cores": device.cpu_cores,
        "availability_model": device.availability_model,
        "runtime": device.runtime,
        "runtime_colour": RUNTIME_COLOURS.get(device.runtime, "grey"),
        "last_seen_at": _iso(device.last_seen_at),
        "lease_job_id": device.lease_job_id,
        "tags": sorted(tag.name for tag in device.tags.all()),
        # Pages apply an event only if it is not older than what they show.
        "updated_at": _iso(device.updated_at),
    }


def status_counts() -> dict[str, int]:
    """Number of phones per status, every status present (zeros included)."""
    counts = {status.value: 0 for status in DeviceStatus}
    for row in Device.objects.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def availability_model_counts() -> list[tuple[str, int]]:
    """Phones per availability model they reported (virtual labs' scenarios), most common first."""
    rows = (
        Device.objects.exclude(availability_model="")
        .values("availability_model")
        .annotate(n=Count("id"))
        .order_by("-n", "availability_model")
    )
    return [(row["availability_model"], row["n"]) for row in rows]


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _fresh(device_id: int) -> Device:
    return Device.objects.prefetch_related("tags").get(pk=device_id)


# --- app mode: what a person types in Termux -------------------------------------------------------
TERMUX_SECRET_FILE = "~/.fedfleet-agent-secret"  # noqa: S105 - a file name, in Termux's home


def termux_command(device: Device) -> str:
    """The line a person types in Termux to start this phone's agent (app runtime; shown to operators
    only, as it holds the secret). The secret goes into a 0600 file in Termux's home, never onto the
    agent's command line; agent.pyz runs from the phone's work dir on shared storage, which the
    platform's ADB reaches too; termux-wake-lock keeps the phone from sleeping it away."""
    work_dir = device.work_dir.rstrip("/") or "/"
    return (
        f"umask 077 && echo {shlex.quote(device.agent_secret)} > {TERMUX_SECRET_FILE} && "
        f"termux-wake-lock; cd {shlex.quote(work_dir)} && "
        f"python agent.pyz serve --port {int(device.agent_port)} --secret-file {TERMUX_SECRET_FILE}"
    )


# --- registration --------------------------------------------------------------------------------------
def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Lower-case slugs, de-duplicated and sorted; ValidationError for anything else."""
    names: set[str] = set()
    for raw in tags:
        name = raw.strip().lower()
        if not name:
            continue
        if len(name) > 40 or not all(ch.isalnum() or ch in "-_" for ch in name) or not name.isascii():
            raise ValidationError(f"Tag {raw!r}: use up to 40 letters, digits, - or _.")
        names.add(name)
    return sorted(names)


def _set_tags(device: Device, tags: Iterable[str]) -> None:
    names = normalise_tags(tags)
    tag_objects = [Tag.objects.get_or_create(name=name)[0] for name in names]
    device.tags.set(tag_objects)


@dataclass(frozen=True)
class DeviceSettings:
    """What a person (or a script) decides about a phone; everything else is learned by probing."""

    name: str
    transport: str
    address: str
    tags: tuple[str, ...] = ()
    agent_python: str = DEFAULT_AGENT_PYTHON
    work_dir: str = DEFAULT_WORK_DIR
    worker_queue: str = ""
    runtime: str = "exec"
    agent_port: int = DEFAULT_AGENT_PORT
    agent_secret: str = ""  # blank: keep the phone's secret (a new phone gets a fresh one)


def _validated(device: Device) -> None:
    try:
        device.address = normalise_address(device.transport, device.address)
    except AddressError as exc:
        raise ValidationError({"address": str(exc)}) from exc
    device.work_dir = normalise_work_dir(device.work_dir)
    device.agent_python = " ".join(device.agent_python.split())
    device.full_clean()


def retired_device_at(transport: str, address: str) -> Device | None:
    """The retired phone registered at this address, if any: registering the address again revives it."""
    try:
        normalised = normalise_address(transport, address)
    except AddressError:
        return None
    return Device.objects.filter(address=normalised, status=DeviceStatus.RETIRED).first()


def create_device(settings_: DeviceSettings) -> Device:
    """Register a new phone (status unknown until its first probe); ValidationError on bad input.
    The address of a retired phone brings that phone back, with its history, under these settings."""
    now = timezone.now()
    with transaction.atomic():
        retired = retired_device_at(settings_.transport, settings_.address)
        if retired is not None:
            return _revive(retired.pk, settings_)
        device = Device(
            name=settings_.name.strip(),
            transport=settings_.transport,
            address=settings_.address,
            agent_python=settings_.agent_python,
            work_dir=settings_.work_dir,
            worker_queue=settings_.worker_queue,
            runtime=settings_.runtime,
            agent_port=settings_.agent_port,
            status=DeviceStatus.UNKNOWN,
            status_changed_at=now,
        )
        if settings_.agent_secret:
            device.agent_secret = settings_.agent_secret
        _validated(device)
        device.save()
        _set_tags(device, settings_.tags)
        AvailabilityInterval.objects.create(device=device, status=DeviceStatus.UNKNOWN, started_at=now)
        _emit_row("device.added", device.pk, with_counts=True)
    return device


def _apply_settings(device: Device, settings_: DeviceSettings) -> None:
    device.name = settings_.name.strip()
    device.transport = settings_.transport
    device.address = settings_.address
    device.agent_python = settings_.agent_python
    device.work_dir = settings_.work_dir
    device.worker_queue = settings_.worker_queue
    device.runtime = settings_.runtime
    device.agent_port = settings_.agent_port
    if settings_.agent_secret:
        device.agent_secret = settings_.agent_secret
    _validated(device)
    device.save()
    _set_tags(device, settings_.tags)


def update_device(device_id: int, settings_: DeviceSettings) -> Device:
    """Change a phone's settings. A new address resets its status to unknown (it is another phone now);
    a retired phone stays retired."""
    with transaction.atomic():
        device = Device.objects.get(pk=device_id)
        old_target = (device.transport, device.address)
        _apply_settings(device, settings_)
        if (device.transport, device.address) != old_target:
            set_status(device.pk, DeviceStatus.UNKNOWN, reason="address changed")
        _emit_row("device.updated", device.pk)
    return _fresh(device_id)


def _revive(device_id: int, settings_: DeviceSettings) -> Device:
    """A retired phone registered again: its row (and so every record of its past jobs) comes back to
    the lab with the new settings, status unknown until its first probe."""
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device_id)
        _apply_settings(device, settings_)
        _record_status(device, DeviceStatus.UNKNOWN, reason="registered again")
        _emit_row("device.added", device.pk, with_counts=True)
    return _fresh(device_id)


def register_or_update_device(
    *,
    name: str,
    transport: str,
    address: str,
    tags: Iterable[str] = (),
    agent_python: str = DEFAULT_AGENT_PYTHON,
    work_dir: str = DEFAULT_WORK_DIR,
    runtime: str = "exec",
    agent_port: int = DEFAULT_AGENT_PORT,
    agent_secret: str = "",
) -> Device:
    """Idempotent registration for scripts (virtual_lab --register): match by address, then by name.

    Re-running with the same phones updates them in place; a phone that moved to another port but kept
    its name is updated too. ValidationError when the name belongs to one phone and the address to another.
    """
    try:
        normalised = normalise_address(transport, address)
    except AddressError as exc:
        raise ValidationError({"address": str(exc)}) from exc
    wanted = DeviceSettings(
        name=name,
        transport=transport,
        address=normalised,
        tags=tuple(tags),
        agent_python=agent_python,
        work_dir=work_dir,
        runtime=runtime,
        agent_port=agent_port,
        agent_secret=agent_secret,
    )
    with transaction.atomic():
        by_address = Device.objects.filter(address=normalised).first()
        by_name = Device.objects.filter(name=name.strip()).first()
        if by_address and by_name and by_address.pk != by_name.pk:
            raise ValidationError(
                f"{normalised} is registered as {by_address.name!r} and the name {name!r} belongs to another phone"
            )
        existing = by_address or by_name
        if existing is None:
            return create_device(wanted)
        wanted = dataclasses.replace(wanted, worker_queue=existing.worker_queue)
        if existing.status == DeviceStatus.RETIRED:
            return _revive(existing.pk, wanted)
        return update_device(existing.pk, wanted)


class DeviceInUse(Exception):
    """The phone is leased to a job; it cannot be removed until the job lets it go."""


@dataclass(frozen=True)
class History:
    """What other apps' records hold of a phone: rows that PROTECT it, and the jobs they belong to."""

    records: int
    jobs: int


@dataclass(frozen=True)
class Removal:
    """What remove_device did, in words a person (the UI) and a script (the API) can show."""

    device_id: int
    name: str
    retired: bool
    history: History

    @property
    def outcome(self) -> str:
        return "retired" if self.retired else "deleted"

    @property
    def message(self) -> str:
        if not self.retired:
            return f"{self.name} removed from the lab."
        jobs = self.history.jobs
        past = (
            f"it took part in {jobs} job{'s' if jobs != 1 else ''}"
            if jobs
            else "records of past jobs name it"
        )
        return f"{self.name} retired: {past}; its records are kept."


def _protecting_relations() -> list[Any]:
    """Other apps' foreign keys to Device that PROTECT it (the training app's results, participants,
    influence rows), found by introspection: devices never imports the apps that keep records of phones."""
    return [
        relation
        for relation in Device._meta.get_fields(include_hidden=True)
        if relation.auto_created
        and not relation.concrete
        and relation.one_to_many
        and getattr(relation, "on_delete", None) is models.PROTECT
    ]


def device_history(device_id: int) -> History:
    """How many protecting records name the phone, and in how many jobs (records that have a `job`)."""
    records = 0
    jobs: set[Any] = set()
    for relation in _protecting_relations():
        rows = relation.related_model._base_manager.filter(**{relation.field.name: device_id})
        records += rows.count()
        if any(field.name == "job" for field in relation.related_model._meta.concrete_fields):
            jobs.update(rows.values_list("job", flat=True).distinct())
    return History(records=records, jobs=len(jobs))


def remove_device(device_id: int) -> Removal:
    """Take a phone out of the lab. One without history is deleted (with its telemetry); one that past
    jobs' records name is retired instead — kept, with every record, but out of the online set (never
    selected), never probed and hidden from the fleet list. DeviceInUse while a job holds it."""
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device_id)
        if device.lease_job_id is not None:
            raise DeviceInUse(f"{device.name} is in use by job {device.lease_job_id}")
        history = device_history(device_id)
        if history.records == 0:
            try:
                with transaction.atomic():  # a savepoint: a record written meanwhile protects the row
                    device.delete()
            except ProtectedError:
                history = device_history(device_id)
            else:
                send_fleet_event("device.removed", device={"id": device_id}, counts=status_counts())
                return Removal(device_id, device.name, retired=False, history=history)
        removal = Removal(device_id, device.name, retired=True, history=history)
        if device.status != DeviceStatus.RETIRED:
            _record_status(device, DeviceStatus.RETIRED, reason=removal.message)
        return removal


# --- status and availability ---------------------------------------------------------------------------
def set_status(device_id: int, status: str, *, reason: str = "") -> Device:
    """Record a phone's status. A change closes the open availability interval, opens a new one, and
    broadcasts `device.status` after commit; the same status again only refreshes the reason.

    A retired phone keeps its status whatever a late probe or a job releasing it says: only registering
    it again (create_device, register_or_update_device) brings it back, and only remove_device retires."""
    status = DeviceStatus(status)
    if status == DeviceStatus.RETIRED:
        raise ValueError("a phone is retired by remove_device, which checks its lease and history")
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device_id)
        if device.status == DeviceStatus.RETIRED:
            return device
        return _record_status(device, status, reason)


def _record_status(device: Device, status: DeviceStatus, reason: str) -> Device:
    """set_status's body, for a row the caller has locked (select_for_update) inside its transaction."""
    reason = reason[:300]
    now = timezone.now()
    device_id = device.pk
    changed = device.status != status
    if not changed and device.status_reason == reason:
        if status in (DeviceStatus.ONLINE, DeviceStatus.BUSY):
            Device.objects.filter(pk=device_id).update(last_seen_at=now)
        return device
    fields = ["status", "status_reason", "updated_at"]
    if changed:
        _close_open_interval(device_id, now)
        AvailabilityInterval.objects.create(device_id=device_id, status=status, reason=reason, started_at=now)
        device.status_changed_at = now
        fields.append("status_changed_at")
    if status in (DeviceStatus.ONLINE, DeviceStatus.BUSY):
        device.last_seen_at = now
        fields.append("last_seen_at")
    device.status = status
    device.status_reason = reason
    device.save(update_fields=fields)
    _emit_row("device.status", device_id, with_counts=changed)
    return device


def _close_open_interval(device_id: int, now: dt.datetime) -> None:
    for interval in AvailabilityInterval.objects.filter(device_id=device_id, ended_at__isnull=True):
        # max(): a clock that stepped back must not produce an interval that ends before it starts.
        interval.ended_at = max(now, interval.started_at)
        interval.save(update_fields=["ended_at"])


def _emit_row(event_type: str, device_id: int, *, with_counts: bool = False) -> None:
    payload: dict[str, Any] = {"device": fleet_row(_fresh(device_id))}
    if with_counts:
        payload["counts"] = status_counts()
    send_fleet_event(event_type, **payload)


# --- telemetry -----------------------------------------------------------------------------------------
def _telemetry_values(telemetry: Telemetry) -> dict[str, Any]:
    props = telemetry.properties
    values: dict[str, Any] = {
        "manufacturer": props.manufacturer,
        "model": props.model,
        "android_release": props.android_release,
        "sdk_int": props.sdk_int,
        "abi": props.abi,
        "cpu_cores": telemetry.cpu_cores,
        "availability_model": props.availability_model,
    }
    if telemetry.battery is not None:
        values["battery_level"] = telemetry.battery.level_percent
        values["charging"] = telemetry.battery.charging
        values["battery_temperature_c"] = telemetry.battery.temperature_c
    if telemetry.memory is not None:
        values["ram_total_mb"] = telemetry.memory.total_mb
        values["ram_available_mb"] = telemetry.memory.available_mb
    # A value the phone did not give this time keeps the last known one.
    return {key: value for key, value in values.items() if value not in (None, "")}


def record_telemetry(device_id: int, telemetry: Telemetry, *, at: dt.datetime | None = None) -> Device:
    """Store the latest telemetry on the device, append a history sample (at most one per
    FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S), and broadcast `device.telemetry` if anything visible changed."""
    now = at or timezone.now()
    values = _telemetry_values(telemetry)
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device_id)
        changed = any(getattr(device, key) != value for key, value in values.items())
        for key, value in values.items():
            setattr(device, key, value)
        device.telemetry_at = now
        device.last_seen_at = now
        device.save(update_fields=[*values, "telemetry_at", "last_seen_at", "updated_at"])
        if _sample_due(device_id, now):
            TelemetrySample.objects.create(
                device_id=device_id,
                recorded_at=now,
                battery_level=device.battery_level,
                charging=device.charging,
                battery_temperature_c=device.battery_temperature_c,
                ram_available_mb=device.ram_available_mb,
            )
        if changed:
            _emit_row("device.telemetry", device_id)
    return device


def _sample_due(device_id: int, now: dt.datetime) -> bool:
    interval = dt.timedelta(seconds=settings.FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S)
    return not TelemetrySample.objects.filter(device_id=device_id, recorded_at__gt=now - interval).exists()


def purge_old_telemetry(*, now: dt.datetime | None = None) -> int:
    """Delete samples and closed availability intervals older than the retention; returns rows deleted."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.FEDFLEET_TELEMETRY_RETENTION_DAYS)
    samples, _ = TelemetrySample.objects.filter(recorded_at__lt=cutoff).delete()
    intervals, _ = AvailabilityInterval.objects.filter(ended_at__lt=cutoff).delete()
    return samples + intervals


# --- health probes -------------------------------------------------------------------------------------
def claim_probe(device_id: int, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """Claim a phone for one health probe with a conditional UPDATE; None if another probe holds it
    (or the phone is leased to a job, whose own traffic must not be disturbed, or retired)."""
    now = now or timezone.now()
    claimed = (
        Device.objects.filter(pk=device_id, lease_job_id__isnull=True)
        .exclude(status=DeviceStatus.RETIRED)
        .filter(Q(probe_claimed_at__isnull=True) | Q(probe_claimed_at__lt=now - PROBE_CLAIM_STALE_AFTER))
        .update(probe_claimed_at=now)
    )
    return now if claimed == 1 else None


def release_probe(device_id: int, claimed_at: dt.datetime) -> None:
    """Give the claim back, unless it expired and another probe took it over meanwhile."""
    Device.objects.filter(pk=device_id, probe_claimed_at=claimed_at).update(probe_claimed_at=None)


def probe_candidates(*, now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """(device id, worker queue) of phones a fan-out should probe: not leased, not being probed, not
    retired."""
    now = now or timezone.now()
    rows = (
        Device.objects.filter(lease_job_id__isnull=True)
        .exclude(status=DeviceStatus.RETIRED)
        .filter(Q(probe_claimed_at__isnull=True) | Q(probe_claimed_at__lt=now - PROBE_CLAIM_STALE_AFTER))
        .values_list("pk", "worker_queue")
    )
    return [(pk, queue) for pk, queue in rows]


def apply_probe_result(
    device_id: int, status: str, *, reason: str = "", telemetry: Telemetry | None = None
) -> None:
    """What a probe learned: telemetry first, then the status (a leased phone keeps its busy status).
    A phone retired while the probe talked to it learns nothing."""
    with transaction.atomic():
        if Device.objects.filter(pk=device_id, status=DeviceStatus.RETIRED).exists():
            return
        if telemetry is not None:
            record_telemetry(device_id, telemetry)
        leased = Device.objects.filter(pk=device_id, lease_job_id__isnull=False).exists()
        if not leased:
            set_status(device_id, status, reason=reason)
