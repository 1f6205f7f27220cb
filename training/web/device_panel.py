"""The device page's "Federated jobs" card: this phone's participation across jobs.

Registered into devices.extensions.DEVICE_PANELS from TrainingConfig.ready(), so the devices app shows it
without importing training (the dependency keeps pointing from training to devices).
"""

from __future__ import annotations

from typing import Any

from devices.extensions import DevicePanel
from training.analysis.availability import DEVICE_PANEL_JOBS, DeviceJobRow, device_participation
from training.web.charts.availability import device_heatmap_figure
from training.web.charts.job import Figure

TEMPLATE = "training/_device_participation.html"


def device_job_rows(device_id: int) -> tuple[list[DeviceJobRow], Figure]:
    """This phone's participation in its latest jobs, and a jobs × rounds heatmap of its states."""
    rows, heat_rows = device_participation(device_id)
    return rows, device_heatmap_figure(heat_rows)


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
