"""The device page's "Federated jobs" card: this phone's participation across jobs.

Registered into devices.extensions.DEVICE_PANELS from TrainingConfig.ready(), so the devices app shows it
without importing training (the dependency keeps pointing from training to devices).
"""

from __future__ import annotations

from typing import Any

from devices.extensions import DevicePanel
from training.availability_report import DEVICE_PANEL_JOBS, device_job_rows

TEMPLATE = "training/_device_participation.html"


def participation_panel(device: Any) -> DevicePanel | None:
    """None for a phone that never joined a job (no empty card)."""
    rows, figure = device_job_rows(device.pk)
    if not rows:
        return None
    return DevicePanel(
        title="Federated jobs",
        template=TEMPLATE,
        context={"rows": rows, "figure": figure, "limit": DEVICE_PANEL_JOBS},
    )
