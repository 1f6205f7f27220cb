"""A phone is leased to one job at a time (status busy); leases are conditional UPDATEs, so two jobs
racing for the same phone cannot both get it."""

from __future__ import annotations

from collections.abc import Iterable

from devices import services as device_services
from devices.models import Device, DeviceStatus


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


def release_job(job_id: int) -> None:
    release_devices(job_id, list(Device.objects.filter(lease_job_id=job_id).values_list("pk", flat=True)))
