"""End to end in Debian's chromium: log in, register a virtual phone through the form, and watch it turn
online on an already-open fleet page (no reload). Saves test-artifacts/fleet.png."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import browser, log_in, logged_in_page, save_screenshot  # noqa: F401
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

    context, fleet = logged_in_page(
        browser,
        daphne_server,
        "/devices/",
        "browser-op",
        "browser-pass-1",
        timeout_ms=LIVE_TIMEOUT_MS,
        height=720,
    )
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


def test_a_dropped_websocket_reconnects_and_catches_up_from_a_snapshot(
    browser_operator: Any,
    daphne_server: str,
    celery_devices_worker: Any,
    browser: Any,  # noqa: F811
) -> None:
    """The socket drops and is refused twice (each retry waits longer); a phone registered meanwhile
    sends its event to nobody. Once the server is reachable again the page reconnects, reloads its
    snapshot and shows the phone — still the same document."""
    from playwright.sync_api import expect

    accept = {"connections": True}
    sockets: list[Any] = []
    attempts: list[float] = []

    def route(ws: Any) -> None:
        attempts.append(time.monotonic())
        if not accept["connections"]:
            ws.close(code=1011, reason="server unreachable (test)")
            return
        ws.connect_to_server()
        sockets.append(ws)

    context = browser.new_context(base_url=daphne_server, viewport={"width": 1280, "height": 720})
    fleet = context.new_page()
    fleet.set_default_timeout(LIVE_TIMEOUT_MS)
    fleet.route_web_socket("**/ws/fleet/", route)
    fleet.goto("/devices/")
    log_in(fleet, "browser-op", "browser-pass-1", then_at=r"/devices/$")
    indicator = fleet.locator("#live-indicator")
    expect(indicator).to_have_class(re.compile(r"\bconnected\b"))
    fleet.evaluate("window.__sameDocument = true")

    accept["connections"] = False
    dropped_at = time.monotonic()
    sockets[-1].close(code=1006, reason="dropped (test)")
    expect(indicator).to_have_class(re.compile(r"\breconnecting\b"))
    expect(indicator).to_contain_text("reconnecting in")
    refused_from = len(attempts)
    deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
    while len(attempts) < refused_from + 2:  # two refused retries (Playwright delivers them while waiting)
        assert time.monotonic() < deadline, "the page stopped retrying"
        fleet.wait_for_timeout(50)
    first, second = attempts[refused_from] - dropped_at, attempts[refused_from + 1] - attempts[refused_from]
    # 0.5 s, then 1 s, each ±25 % (plus how late Playwright hands the attempt to this thread)
    assert 0.3 < first < 2.0 and second > 0.65 and second > first, (first, second)
    expect(indicator).to_have_class(re.compile(r"\breconnecting\b"))

    # Registered while the page has no socket: its device.added event reaches nobody.
    form = context.new_page()
    form.set_default_timeout(LIVE_TIMEOUT_MS)
    form.goto("/devices/register/")
    form.fill("#id_name", "missed-while-offline")
    form.fill("#id_address", "127.0.0.1:9")
    form.click("#device-form button[type=submit]")
    expect(form).to_have_url(re.compile(r"/devices/\d+/$"))
    expect(fleet.locator("#fleet-table")).not_to_contain_text("missed-while-offline")

    accept["connections"] = True
    expect(indicator).to_have_class(re.compile(r"\bconnected\b"))
    expect(fleet.locator("#fleet-table tr", has_text="missed-while-offline")).to_be_visible()
    assert fleet.evaluate("window.__sameDocument") is True
    context.close()
