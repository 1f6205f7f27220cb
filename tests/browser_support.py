"""What the browser tests share: Debian's chromium driven by Playwright, logging in through the form,
and phones registered before the browser starts — Playwright's sync API runs an event loop in the
test's thread, where Django refuses ORM calls, so the database is set up first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devices import tasks as device_tasks
from devices.models import DeviceStatus
from devices.services import register_or_update_device
from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def log_in(page: Any, username: str, password: str, *, then_at: str) -> None:
    """Fill the login form the page was sent to; expect to land on the URL matching `then_at`."""
    from playwright.sync_api import expect

    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(then_at))


def logged_in_page(
    browser: Any,
    base_url: str,
    path: str,
    username: str,
    password: str,
    *,
    timeout_ms: float,
    height: int = 900,
) -> tuple[Any, Any]:
    """A new browser context and page that asked for `path`, logged in and landed there."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": height})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(path)
    log_in(page, username, password, then_at=re.escape(path) + "$")
    return context, page


def register_online_phones(lab: Any, *, prefix: str, tag: str) -> None:
    """Register every phone of a virtual lab as `<prefix>-<i>` with `tag`, and probe it online."""
    for index, phone in enumerate(lab.phones):
        device = register_or_update_device(
            name=f"{prefix}-{index}", transport="tcp", address=phone.address, tags=[tag]
        )
        assert device_tasks.probe_device(device.pk) == DeviceStatus.ONLINE


def save_screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
