"""In chromium: retiring a phone with history from its page takes it off an open fleet page live (the
Retired count goes up, the lab's total down), the flash message says what happened, and "Show retired"
finds it again. Saves test-artifacts/retire-confirm.png and fleet-retired.png."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.utils import timezone

from accounts.roles import OPERATORS
from devices import services
from devices.models import Device, DeviceStatus
from tests.browser_support import browser, logged_in_page, save_screenshot  # noqa: F401
from tests.conftest import make_user
from training.jobs.config import DEFAULTS
from training.models import ClientResult, Job, Participant, Round

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

TIMEOUT_MS = 45_000


@pytest.fixture
def lab_with_history(transactional_db: None) -> Device:
    """Created before the browser starts (Django refuses ORM calls beside Playwright's event loop)."""
    owner = make_user("retire-op", OPERATORS, password="retire-pass-1", for_subprocess=True)
    for name, address in (("keeper", "10.0.0.21:5555"), ("veteran", "10.0.0.22:5555")):
        device = services.create_device(services.DeviceSettings(name=name, transport="tcp", address=address))
        services.set_status(device.pk, DeviceStatus.ONLINE)
    veteran = Device.objects.get(name="veteran")
    for number in range(2):
        job = Job.objects.create(
            name=f"past-{number}", owner=owner, status="completed", config=DEFAULTS.to_dict(),
            algorithm="fedavg", dataset="digits", model_name="mlp", rounds_total=1, clients_per_round=1,
        )  # fmt: skip
        rnd = Round.objects.create(
            job=job, number=1, status="committed", goal=1, min_reports=1, deadline_at=timezone.now()
        )
        Participant.objects.create(
            job=job, device=veteran, client_index=0, num_samples=45, shard_sha256="0" * 64
        )
        ClientResult.objects.create(job=job, round=rnd, device=veteran, state="reported", num_samples=45)
    return veteran


def test_retire_from_the_device_page_updates_the_open_fleet_page(
    lab_with_history: Device,
    daphne_server: str,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context, fleet = logged_in_page(
        browser, daphne_server, "/devices/", "retire-op", "retire-pass-1", timeout_ms=TIMEOUT_MS, height=720
    )
    expect(fleet.locator("#live-indicator")).to_have_class(re.compile(r"\bconnected\b"))
    expect(fleet.locator("#fleet-table tr", has_text="veteran")).to_be_visible()
    expect(fleet.locator("#fleet-total")).to_have_text("2 phones")
    fleet.evaluate("window.__sameDocument = true")

    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"/devices/{lab_with_history.pk}/delete/")
    expect(page.locator("#removal-outcome")).to_contain_text("took part in 2 jobs, so it will be retired")
    save_screenshot(page, "retire-confirm.png")
    page.click("#confirm-removal")
    expect(page).to_have_url(re.compile(r"/devices/$"))
    expect(page.locator("body")).to_contain_text(
        "veteran retired: it took part in 2 jobs; its records are kept."
    )

    # The open page: the row leaves without a reload, the counts follow.
    expect(fleet.locator("#fleet-table tr", has_text="veteran")).to_have_count(0)
    expect(fleet.locator('[data-count="retired"]')).to_have_text("1")
    expect(fleet.locator("#fleet-total")).to_have_text("1 phone")
    assert fleet.evaluate("window.__sameDocument") is True

    fleet.check("#f-retired")
    fleet.click("#fleet-filters button[type=submit]")
    row = fleet.locator("#fleet-table tr", has_text="veteran")
    expect(row.locator("[data-testid=status]")).to_have_text("Retired")
    expect(fleet.locator("#fleet-table tr", has_text="keeper")).to_be_visible()
    save_screenshot(fleet, "fleet-retired.png")
    context.close()
