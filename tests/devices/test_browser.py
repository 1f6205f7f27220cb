"""End to end in Debian's chromium: log in, register a virtual phone through the form, and watch it turn
online on an already-open fleet page (no reload). Saves test-artifacts/fleet.png."""

from __future__ import annotations

import re
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import browser, log_in, save_screenshot  # noqa: F401 - browser is a fixture
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

LIVE_TIMEOUT_MS = 45_000


@pytest.fixture
def browser_operator(transactional_db: None) -> Any:
    # Created before the browser starts: Playwright's sync API runs an event loop in this thread, and
    # Django refuses ORM calls from a thread with a running loop.
    return make_user("browser-op", OPERATORS, password="browser-pass-1", for_subprocess=True)


def test_register_a_phone_and_watch_it_come_online(
    browser_operator: Any,
    daphne_server: str,
    celery_devices_worker: Any,
    virtual_phones: Any,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    phone = virtual_phones(1, seed=11).phones[0]

    context = browser.new_context(base_url=daphne_server, viewport={"width": 1280, "height": 720})
    fleet = context.new_page()
    fleet.set_default_timeout(LIVE_TIMEOUT_MS)
    fleet.goto("/devices/")
    log_in(fleet, "browser-op", "browser-pass-1", then_at=r"/devices/$")
    expect(fleet.locator("#live-indicator")).to_have_class(re.compile(r"\bconnected\b"))
    expect(fleet.locator("#fleet-table")).to_contain_text("No phones")
    fleet.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    # Register in a second tab; the first one stays open and is never reloaded.
    form = context.new_page()
    form.set_default_timeout(LIVE_TIMEOUT_MS)
    form.goto("/devices/register/")
    form.fill("#id_name", "browser-phone")
    form.fill("#id_address", "127.0.0.1:99999")
    form.click("#device-form button[type=submit]")
    expect(form.locator("[data-testid=error-address]")).to_contain_text("out of range (1-65535)")
    form.fill("#id_address", phone.address)
    form.fill("#id_tags", "browser, lab-a")
    form.click("#test-connection")
    expect(form.locator("#test-result")).to_have_attribute("data-result", "online")
    expect(form.locator("#test-result")).to_contain_text(phone.model)
    save_screenshot(form, "register.png")
    form.click("#device-form button[type=submit]")
    expect(form).to_have_url(re.compile(r"/devices/\d+/$"))

    row = fleet.locator("#fleet-table tr", has_text="browser-phone")
    expect(row).to_be_visible()  # appeared through device.added, without a reload
    expect(row.locator("[data-testid=status]")).to_have_text("Online")
    expect(row).to_contain_text(phone.model)
    expect(fleet.locator('[data-count="online"]')).to_have_text("1")
    assert fleet.evaluate("window.__sameDocument") is True

    save_screenshot(fleet, "fleet.png")
    form.goto(form.url)  # the device page draws its Plotly charts from the local plotly.js
    expect(form.locator("#availability-chart .main-svg").first).to_be_visible()
    save_screenshot(form, "device.png")
    context.close()
