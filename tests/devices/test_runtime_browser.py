"""In Debian's chromium: the fleet page shows each phone's runtime and, for resident and app phones, why
their agent is not ready; operators (only) see each app phone's one-line Termux command; the job
dashboard's phone grid shows each phone's runtime. Saves test-artifacts/fleet-runtimes.png,
job-runtimes.png and device-app-runtime.png."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.roles import OPERATORS, VIEWERS
from devices import services
from devices.models import Device, DeviceStatus
from tests.browser_support import browser, logged_in_page, save_screenshot  # noqa: F401
from tests.conftest import make_user
from tests.training.web_factories import add_client, make_job, make_round

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]
TIMEOUT_MS = 30_000


def phone(name: str, port: int, runtime: str, status: str, reason: str = "", **changes: Any) -> Device:
    device = services.create_device(
        services.DeviceSettings(
            name=name,
            transport="tcp",
            address=f"10.1.0.{port % 250}:{port}",
            runtime=runtime,
            work_dir="/sdcard/fedfleet/" if runtime == "app" else "/data/local/tmp/fedfleet/",
            **changes,
        )
    )
    services.set_status(device.pk, status, reason=reason)
    return Device.objects.get(pk=device.pk)


@pytest.fixture
def lab_rows(transactional_db: None) -> dict[str, Any]:
    rows = {
        "exec": phone("board-exec", 5601, "exec", DeviceStatus.ONLINE),
        "resident": phone(
            "pixel-resident",
            5602,
            "resident",
            DeviceStatus.ONLINE,
            "agent outdated, upgrading (1a2b -> 3c4d)",
        ),
        "app": phone(
            "galaxy-app",
            5603,
            "app",
            DeviceStatus.OFFLINE,
            "unreachable during job 3: agent not running: start it in Termux",
            agent_secret="shown-to-operators-only-42",
        ),
        "wrong": phone("moto-app", 5604, "app", DeviceStatus.UNAUTHORIZED, "wrong agent secret: refused"),
    }
    owner = make_user("browser-runtime-op", OPERATORS, password="browser-pass-1", for_subprocess=True)
    make_user("browser-runtime-viewer", VIEWERS, password="browser-pass-1", for_subprocess=True)
    job = make_job(owner, name="runtime-mix", clients_per_round=3)
    rnd = make_round(job, 1, status="training")
    add_client(rnd, rows["exec"], "training", step=3, steps_total=10)
    add_client(rnd, rows["resident"], "reported", num_samples=45)
    add_client(rnd, rows["app"], "failed", reason="phone went offline: agent not running")
    rows["job"] = job
    return rows


def test_runtimes_and_agent_reasons_on_the_fleet_page_and_the_dashboard(
    lab_rows: dict[str, Any],
    daphne_server: str,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context, fleet = logged_in_page(
        browser, daphne_server, "/devices/", "browser-runtime-op", "browser-pass-1", timeout_ms=TIMEOUT_MS
    )
    row = fleet.locator("#fleet-table tr", has_text="galaxy-app")
    expect(row.locator("[data-testid=runtime]")).to_have_text("app")
    expect(row.locator("[data-testid=agent-reason]")).to_contain_text("agent not running")
    resident = fleet.locator("#fleet-table tr", has_text="pixel-resident")
    expect(resident.locator("[data-testid=agent-reason]")).to_contain_text("agent outdated, upgrading")
    expect(
        fleet.locator("#fleet-table tr", has_text="board-exec").locator("[data-testid=runtime]")
    ).to_have_text("exec")
    commands = fleet.locator("[data-testid=app-command]")
    expect(commands).to_have_count(2)
    expect(commands.filter(has_text="galaxy-app")).to_contain_text(
        "echo shown-to-operators-only-42 > ~/.fedfleet-agent-secret"
    )
    expect(fleet.locator("#app-agents")).to_contain_text("termux-wake-lock")
    save_screenshot(fleet, "fleet-runtimes.png")

    dashboard = context.new_page()
    dashboard.set_default_timeout(TIMEOUT_MS)
    dashboard.goto(f"/jobs/{lab_rows['job'].pk}/")
    cell = dashboard.locator(".phone-cell", has_text="galaxy-app")
    expect(cell.locator("[data-testid=phone-runtime]")).to_have_text("app")
    expect(
        dashboard.locator(".phone-cell", has_text="pixel-resident").locator("[data-testid=phone-runtime]")
    ).to_have_text("resident")
    save_screenshot(dashboard, "job-runtimes.png")
    detail = context.new_page()
    detail.set_default_timeout(TIMEOUT_MS)
    detail.goto(f"/devices/{lab_rows['app'].pk}/")
    expect(detail.locator("[data-testid=app-command]")).to_contain_text(
        "--secret-file ~/.fedfleet-agent-secret"
    )
    expect(detail.locator("[data-testid=runtime]")).to_have_text("app")
    save_screenshot(detail, "device-app-runtime.png")
    context.close()

    viewer_context, viewer_fleet = logged_in_page(
        browser, daphne_server, "/devices/", "browser-runtime-viewer", "browser-pass-1", timeout_ms=TIMEOUT_MS
    )
    expect(viewer_fleet.locator("#fleet-table tr", has_text="galaxy-app")).to_contain_text(
        "agent not running"
    )
    expect(viewer_fleet.locator("#app-agents")).to_have_count(0)
    assert "shown-to-operators-only-42" not in viewer_fleet.content()
    viewer_context.close()
