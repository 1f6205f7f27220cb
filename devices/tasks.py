"""Celery tasks of the device lab (queue `devices`, or a phone's `devices.<host>` queue).

Beat runs `probe_fleet` every FEDFLEET_PROBE_INTERVAL_S; it sends one `probe_device` per phone. A probe
first claims its phone with a conditional UPDATE (devices.services.claim_probe), so when polls overlap
(slow phones, a backlog after a worker restart) a phone is still probed by one task at a time; the
others return at once. Tasks take ids, so redelivery (acks_late) is harmless.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from config.celery import device_queue
from devices import services
from devices.models import Device
from devices.probing import probe_address

log = logging.getLogger(__name__)


@shared_task(name="devices.tasks.probe_fleet", ignore_result=True)
def probe_fleet() -> int:
    """Fan out one probe per phone that is neither leased to a job nor being probed; returns the count."""
    expires = float(settings.FEDFLEET_PROBE_INTERVAL_S) * 2
    candidates = services.probe_candidates()
    for device_id, worker_queue in candidates:
        # expires: a probe that waited two periods in the queue is stale; a newer one is on its way.
        probe_device.apply_async(args=[device_id], queue=device_queue(worker_queue), expires=expires)
    return len(candidates)


@shared_task(name="devices.tasks.probe_device", ignore_result=True, soft_time_limit=45, time_limit=60)
def probe_device(device_id: int) -> str:
    """Probe one phone and record what it says. Returns the new status, or "skipped"/"gone"."""
    claimed_at = services.claim_probe(device_id)
    if claimed_at is None:
        return "skipped"
    try:
        try:
            device = Device.objects.get(pk=device_id)
        except Device.DoesNotExist:
            return "gone"
        outcome = probe_address(
            device.transport,
            device.address,
            connect_timeout_s=settings.FEDFLEET_PROBE_CONNECT_TIMEOUT_S,
            command_timeout_s=settings.FEDFLEET_PROBE_CONNECT_TIMEOUT_S,
            device=device,
        )
        try:
            services.apply_probe_result(
                device_id, outcome.status, reason=outcome.reason, telemetry=outcome.telemetry
            )
        except Device.DoesNotExist:
            return "gone"  # removed while we were talking to it
        return str(outcome.status)
    finally:
        services.release_probe(device_id, claimed_at)


@shared_task(name="devices.tasks.purge_old_telemetry", ignore_result=True)
def purge_old_telemetry() -> int:
    deleted = services.purge_old_telemetry()
    log.info("purged %d telemetry/availability rows past retention", deleted)
    return deleted


def enqueue_probe(device_id: int, worker_queue: str = "") -> None:
    """Ask for a probe now (after registration or an edit) without failing the caller if Redis is down:
    the next beat fan-out probes the phone anyway."""
    try:
        probe_device.apply_async(args=[device_id], queue=device_queue(worker_queue))
    except Exception:  # noqa: BLE001 - broker trouble must not fail a form submission
        log.warning("could not enqueue a probe for device %s", device_id, exc_info=True)
