"""Selection (Bonawitz et al. 2019, step 1): which phones may take part now, and which of them a round picks.

Eligible = online, free (or leased to this job), meeting the job's constraints; the strategy picks among
them (random, FedLaAvg's oldest participation), over-selecting to absorb dropouts. The availability of
every participant at selection time is recorded on the round for the availability report.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from django.db.models import Q

from devices.models import Device, DeviceStatus
from training.fl.strategy import ClientInfo, ServerState, Strategy
from training.jobs import leases
from training.jobs.config import JobConfig
from training.models import ClientResult, Job, Participant

log = logging.getLogger(__name__)


def eligible_devices(config: JobConfig, *, job_id: int | None = None) -> list[Device]:
    """Phones that may take part now: online, free (or already ours), meeting the job's constraints."""
    qs = Device.objects.filter(status=DeviceStatus.ONLINE)
    qs = (
        qs.filter(Q(lease_job_id__isnull=True) | Q(lease_job_id=job_id))
        if job_id
        else qs.filter(lease_job_id__isnull=True)
    )
    for tag in config.device_tags:
        qs = qs.filter(tags__name=tag.lower())
    if config.min_battery:
        qs = qs.filter(Q(battery_level__gte=config.min_battery) | Q(charging=True))
    if config.require_charging:
        qs = qs.filter(charging=True)
    # A phone whose run is still alive (a late phone still training) is never picked twice.
    qs = qs.exclude(pk__in=ClientResult.objects.filter(leases.live_run_filter()).values("device_id"))
    return list(qs.distinct().order_by("pk"))


def _round_rng(config: JobConfig, round_no: int, attempt: int) -> random.Random:
    return random.Random(f"{config.seed}:{round_no}:{attempt}")  # noqa: S311 - reproducible selection


@dataclass(frozen=True)
class Selection:
    chosen: list[Participant]
    eligible: int
    # Every participant's availability when the round began: device id -> idle (eligible, not picked),
    # selected, offline, busy (leased to another job), ineligible (battery/charging) or excluded.
    availability: dict[str, str]


def select_participants(
    job: Job, config: JobConfig, strategy: Strategy, state: ServerState, round_no: int, attempt: int
) -> Selection:
    everyone = list(job.participants.select_related("device"))
    participants = {p.device_id: p for p in everyone if not p.excluded}
    available = [d.pk for d in eligible_devices(config, job_id=job.pk) if d.pk in participants]
    infos = [
        ClientInfo(
            client_id=str(device_id),
            num_samples=participants[device_id].num_samples,
            last_round=participants[device_id].last_round,
        )
        for device_id in available
    ]
    goal = min(config.selection_count, len(infos))
    chosen_ids = strategy.select(state, round_no, infos, goal, _round_rng(config, round_no, attempt))
    availability = {str(p.device_id): _unavailable_state(p, job.pk) for p in everyone}
    availability.update({str(device_id): "idle" for device_id in available})
    availability.update({cid: "selected" for cid in chosen_ids})
    return Selection(
        chosen=[participants[int(cid)] for cid in chosen_ids], eligible=len(infos), availability=availability
    )


def _unavailable_state(participant: Participant, job_id: int) -> str:
    device = participant.device
    if participant.excluded:
        return "excluded"
    if device.lease_job_id not in (None, job_id):
        return "busy"
    if device.status in (DeviceStatus.ONLINE, DeviceStatus.BUSY):
        return "ineligible"
    return "offline"
