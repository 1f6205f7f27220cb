"""The availability section of the job dashboard, the device page's "Federated jobs" card through the
devices.extensions registry, the fleet page's availability models, and SCAFFOLD c_i reset notes."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from devices import extensions
from devices.extensions import DevicePanel, panels_for, register_device_panel, unregister_device_panel
from devices.models import Device
from tests.training.web_factories import add_client, make_device, make_job, make_round, operator, viewer  # noqa: F401
from training.engine import scaffold_notes
from training.models import Job, JobLogEntry, Participant
from training.web import device_panel

pytestmark = pytest.mark.django_db


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def availability_job(operator: Any) -> tuple[Job, list[Device]]:
    """Two committed rounds on three phones: a reports then is offline; b is offline then reports."""
    job = make_job(operator, name="alternating", rounds=4, clients_per_round=1)
    phones = [make_device(name) for name in ("ph-a", "ph-b", "ph-c")]
    counts = ([30, 0], [0, 30], [15, 15])
    for index, (phone, labels) in enumerate(zip(phones, counts, strict=True)):
        Participant.objects.create(
            job=job,
            device=phone,
            client_index=index,
            num_samples=30,
            label_counts=labels,
            shard_sha256="0" * 64,
        )
    a, b, c = (str(p.pk) for p in phones)
    first = make_round(job, 1, accuracy=0.5, availability={a: "selected", b: "offline", c: "idle"})
    add_client(first, phones[0], "reported", num_samples=30)
    second = make_round(job, 2, accuracy=0.6, availability={a: "offline", b: "selected", c: "idle"})
    add_client(second, phones[1], "reported", num_samples=30)
    Participant.objects.filter(job=job, device__in=phones[:2]).update(rounds_reported=1)
    return job, phones


def test_dashboard_snapshot_carries_the_availability_figures(
    viewer: Any, availability_job: tuple[Job, list[Device]]
) -> None:
    job, _ = availability_job
    data = logged_in(viewer).get(reverse("training:job-snapshot", args=[job.pk])).json()
    figures = data["figures"]
    assert {"availability_heatmap", "participation", "availability_bias"} <= set(figures)
    heatmap = figures["availability_heatmap"]["data"][0]
    assert heatmap["y"] == ["ph-a", "ph-b", "ph-c"] and heatmap["x"] == [1, 2]
    assert heatmap["text"][0] == ["Reported (aggregated)", "Offline"]
    assert heatmap["text"][2] == ["Idle (available, not selected)"] * 2
    bias = {t["name"]: t["y"] for t in figures["availability_bias"]["data"]}
    assert bias["This round"] == [0.5, 0.5] and bias["Cumulative"] == [0.5, 0.0]
    assert data["availability"]["mean_tv"] == 0.5 and data["availability"]["basis"] == "reporters"


def test_dashboard_page_has_the_availability_section(
    viewer: Any, availability_job: tuple[Job, list[Device]]
) -> None:
    job, _ = availability_job
    page = logged_in(viewer).get(reverse("training:job-detail", args=[job.pk])).content.decode()
    for container in ("chart-availability_heatmap", "chart-participation", "chart-availability_bias"):
        assert f'id="{container}"' in page


def test_snapshot_stays_small_for_a_long_job(viewer: Any, operator: Any) -> None:
    job = make_job(operator, name="long", rounds=400, clients_per_round=1)
    phone = make_device("ph-long")
    Participant.objects.create(
        job=job, device=phone, client_index=0, num_samples=5, label_counts=[5], shard_sha256="0" * 64
    )
    for number in range(1, 301):
        make_round(job, number, accuracy=0.5, availability={str(phone.pk): "idle"})
    data = logged_in(viewer).get(reverse("training:job-snapshot", args=[job.pk])).json()
    assert len(data["figures"]["availability_heatmap"]["data"][0]["x"]) == 200
    assert data["availability"]["hidden_rounds"] == 100


def test_device_page_shows_the_phone_in_each_job(
    viewer: Any, availability_job: tuple[Job, list[Device]]
) -> None:
    job, phones = availability_job
    page = logged_in(viewer).get(reverse("devices:detail", args=[phones[0].pk])).content.decode()
    assert "Federated jobs" in page and 'data-testid="device-participation"' in page
    assert f"#{job.pk} alternating" in page
    assert 'data-figure="device-participation-figure"' in page and 'id="device-participation-figure"' in page
    rows, figure = device_panel.device_job_rows(phones[0].pk)
    assert [(r.rounds_recorded, r.rounds_online, r.times_selected, r.times_reported) for r in rows] == [
        (2, 1, 1, 1)
    ]
    assert rows[0].participation_share == 0.5 and rows[0].data_share == pytest.approx(1 / 3)
    assert figure["data"][0]["text"] == [["Reported (aggregated)", "Offline"]]


def test_a_phone_without_jobs_gets_no_card(viewer: Any) -> None:
    phone = make_device("ph-new")
    assert device_panel.participation_panel(phone) is None
    assert (
        "Federated jobs"
        not in logged_in(viewer).get(reverse("devices:detail", args=[phone.pk])).content.decode()
    )


def test_training_registers_its_panel_once() -> None:
    assert extensions.DEVICE_PANELS.count(device_panel.participation_panel) == 1
    register_device_panel(device_panel.participation_panel)
    assert extensions.DEVICE_PANELS.count(device_panel.participation_panel) == 1


def test_registry_renders_panels_and_contains_a_failing_one(viewer: Any) -> None:
    phone = make_device("ph-x")

    def extra(device: Device) -> DevicePanel:
        return DevicePanel("Extra card", "devices/_panel_error.html", {})

    def broken(device: Device) -> DevicePanel:
        raise RuntimeError("bug in an extension")

    register_device_panel(extra)
    register_device_panel(broken)
    try:
        titles = [panel.title for panel in panels_for(phone)]
        assert titles == ["Extra card", "Panel unavailable"]
        page = logged_in(viewer).get(reverse("devices:detail", args=[phone.pk]))
        assert (
            page.status_code == 200
            and b"Extra card" in page.content
            and b"could not be drawn" in page.content
        )
    finally:
        unregister_device_panel(extra)
        unregister_device_panel(broken)
    assert extra not in extensions.DEVICE_PANELS


def test_devices_app_never_imports_training() -> None:
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2] / "devices"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n == "training" or n.startswith("training.") for n in names), path


def test_fleet_page_lists_the_availability_models(viewer: Any) -> None:
    make_device("ph-1", availability_model="alternating: group 1 of 2, period 30 s")
    make_device("ph-2", availability_model="alternating: group 1 of 2, period 30 s")
    make_device("ph-3")
    client = logged_in(viewer)
    page = client.get(reverse("devices:fleet")).content.decode()
    assert "alternating: group 1 of 2, period 30 s ×2" in page
    rows = {r["name"]: r for r in client.get(reverse("devices:fleet-snapshot")).json()["devices"]}
    assert (
        rows["ph-1"]["availability_model"].startswith("alternating")
        and rows["ph-3"]["availability_model"] == ""
    )


def test_scaffold_ci_reset_is_noted_in_the_job_log(operator: Any) -> None:
    from training.fl.scaffold import CI_RESET_METRIC  # noqa: PLC0415

    assert scaffold_notes.CI_RESET_METRIC == CI_RESET_METRIC
    from training.jobs.signals import round_committed  # noqa: PLC0415

    assert any(key[0] == "training.scaffold_ci_resets" for key, *_ in round_committed.receivers)
    job = make_job(operator, name="scaffold", algorithm="scaffold")
    wiped, kept = make_device("ph-wiped"), make_device("ph-kept")
    rnd = make_round(job, 3, accuracy=0.7)
    add_client(rnd, wiped, "reported", num_samples=10, metrics={CI_RESET_METRIC: 1.0})
    add_client(rnd, kept, "reported", num_samples=10, metrics={CI_RESET_METRIC: 0.0})
    scaffold_notes.note_ci_resets(None, round_id=rnd.pk, job_id=job.pk)
    entry = JobLogEntry.objects.get(job=job)
    assert entry.level == "warning" and entry.round_number == 3
    assert "ph-wiped" in entry.message and "ph-kept" not in entry.message
    quiet = make_round(job, 4, accuracy=0.7)
    add_client(quiet, kept, "reported", num_samples=10, metrics={CI_RESET_METRIC: 0.0})
    scaffold_notes.note_ci_resets(None, round_id=quiet.pk, job_id=job.pk)
    assert JobLogEntry.objects.filter(job=job).count() == 1


def test_compare_page_shows_oscillation_and_bias_next_to_rounds_to_target(
    viewer: Any, availability_job: tuple[Job, list[Device]]
) -> None:
    job, _ = availability_job
    response = logged_in(viewer).get(reverse("training:job-compare"), {"ids": str(job.pk), "target": "0.55"})
    (row,) = response.context["rows"]
    assert row.rounds_to_target == 2 and row.final_accuracy == 0.6
    assert row.oscillation == pytest.approx(0.05) and row.mean_bias == 0.5
    page = response.content.decode()
    assert "±5.0%" in page and "0.500" in page
    assert response.context["figure"]["data"][0]["y"] == [0.5, 0.6]


def test_a_phone_nothing_answers_on_is_offline_not_released_as_online(operator: Any) -> None:
    """Otherwise release_devices calls it online and the next round picks the vanished phone again."""
    from datetime import timedelta  # noqa: PLC0415

    from django.utils import timezone  # noqa: PLC0415

    from devices.models import DeviceStatus  # noqa: PLC0415
    from tests.conftest import free_port  # noqa: PLC0415
    from training.engine import client as client_runner  # noqa: PLC0415
    from training.jobs import leases
    from training.models import ClientResult, Round  # noqa: PLC0415

    job = make_job(operator, name="gone")
    phone = make_device("ph-gone")
    Device.objects.filter(pk=phone.pk).update(address=f"127.0.0.1:{free_port()}")  # nothing listens there
    Participant.objects.create(
        job=job, device=phone, client_index=0, num_samples=5, label_counts=[5], shard_sha256="0" * 64
    )
    rnd = make_round(job, 1, status="training")
    Round.objects.filter(pk=rnd.pk).update(deadline_at=timezone.now() + timedelta(minutes=5))
    assert leases.lease_devices([phone.pk], job.pk) == [phone.pk]
    result = add_client(rnd, phone, "selected")
    client_runner.run_client(result.pk)
    result.refresh_from_db()
    assert result.state == "failed" and "offline" in result.reason
    leases.release_devices(job.pk, [phone.pk])
    phone.refresh_from_db()
    assert phone.status == DeviceStatus.OFFLINE and phone.lease_job_id is None
    assert ClientResult.objects.filter(pk=result.pk, state="failed").exists()
