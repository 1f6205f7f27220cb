"""A phone is leased to one job at a time (status busy); leases are conditional UPDATEs, so two jobs
racing for the same phone cannot both get it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from devices import services as device_services
from devices.models import Device, DeviceStatus
from training.models import ClientResult


def lease_devices(device_ids: Iterable[int], job_id: int) -> list[int]:
    """Lease the free, online phones among `device_ids` to the job; return the ids actually leased."""
    leased = []
    for device_id in device_ids:
        won = Device.objects.filter(
            pk=device_id, lease_job_id__isnull=True, status=DeviceStatus.ONLINE
        ).update(lease_job_id=job_id)
        if won:
            leased.append(device_id)
            device_services.set_status(device_id, DeviceStatus.BUSY, reason=f"leased to job {job_id}")
    return leased


def release_devices(job_id: int, device_ids: Iterable[int]) -> None:
    for device_id in device_ids:
        if Device.objects.filter(pk=device_id, lease_job_id=job_id).update(lease_job_id=None):
            # Busy → online: the next health probe corrects it if the phone went away meanwhile.
            if Device.objects.filter(pk=device_id, status=DeviceStatus.BUSY).exists():
                device_services.set_status(device_id, DeviceStatus.ONLINE, reason=f"released by job {job_id}")


def release_job(job_id: int) -> set[int]:
    """Release every phone the job holds but those with a live run (returned; see release_idle)."""
    return release_idle(job_id, Device.objects.filter(lease_job_id=job_id).values_list("pk", flat=True))


# --- live runs: a phone is busy while a run on it is alive, whatever its round's state ----------------------
# A run (engine/client.py) claims its ClientResult with an owner token and beats every few seconds; one
# not heard of for this long is dead (its worker was killed) and may be taken over.
# Three missed heartbeats (client.HEARTBEAT_EVERY_S = 5 s).
RUN_STALE_AFTER_S = 15.0


def live_run_filter(now: datetime | None = None) -> Q:
    """ClientResult rows whose run is alive now."""
    now = now or timezone.now()
    return Q(runner__gt="", runner_seen_at__gte=now - timedelta(seconds=RUN_STALE_AFTER_S))


def devices_with_live_runs(device_ids: Iterable[int] | None = None) -> set[int]:
    rows = ClientResult.objects.filter(live_run_filter())
    if device_ids is not None:
        rows = rows.filter(device_id__in=list(device_ids))
    return set(rows.values_list("device_id", flat=True))


def release_idle(job_id: int, device_ids: Iterable[int]) -> set[int]:
    """Release the job's phones among `device_ids` that have no live run; return those still running
    (their run releases them when it ends — releasing them now would let another round start a second
    agent beside the first)."""
    ids = list(device_ids)
    running = devices_with_live_runs(ids)
    release_devices(job_id, [d for d in ids if d not in running])
    return running
