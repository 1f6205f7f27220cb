"""End to end in Debian's chromium: log in, launch a federated job from the form, and watch the accuracy
chart gain points on the live dashboard without reloading. Saves test-artifacts/job_dashboard.png."""

from __future__ import annotations

import re
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import (  # noqa: F401 - browser is a fixture
    browser,
    logged_in_page,
    register_online_phones,
    save_screenshot,
)
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

LIVE_TIMEOUT_MS = 120_000
CHART_POINTS = "document.getElementById('chart-accuracy_loss').data?.[0]?.x?.length ?? 0"


@pytest.fixture
def lab_ready(transactional_db: None, virtual_phones: Any) -> Any:
    """An operator and four online phones tagged `browser-job`, set up before the browser starts
    (Playwright's sync API runs an event loop in this thread, where Django refuses ORM calls)."""
    register_online_phones(virtual_phones(4, seed=51), prefix="bj", tag="browser-job")
    return make_user("job-op", OPERATORS, password="job-pass-1", for_subprocess=True)


def test_launch_a_job_and_watch_accuracy_grow(
    lab_ready: Any,
    daphne_server: str,
    celery_worker: Any,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context, page = logged_in_page(
        browser, daphne_server, "/jobs/new/", "job-op", "job-pass-1", timeout_ms=LIVE_TIMEOUT_MS
    )

    page.fill("#id_name", "browser job")
    page.fill("#id_rounds", "0")
    page.fill("#id_clients_per_round", "3")
    page.fill("#id_device_tags", "browser-job")
    page.click("#job-form button[type=submit]")
    expect(page.locator("[data-testid=error-rounds]")).to_be_visible()  # the error lands on its field

    page.fill("#id_rounds", "4")
    page.fill("#id_local_epochs", "2")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#live-indicator")).to_have_class(re.compile(r"\bconnected\b"))
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    page.wait_for_function(f"{CHART_POINTS} >= 1")
    first = page.evaluate(CHART_POINTS)
    page.wait_for_function(f"{CHART_POINTS} > {first}")  # the chart gained a point, live
    page.wait_for_function(f"{CHART_POINTS} >= 4")
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#round-progress-label")).to_contain_text("4 / 4", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") is True
    accuracy = page.evaluate("document.getElementById('chart-accuracy_loss').data[0].y.at(-1)")
    assert accuracy > 0.6

    save_screenshot(page, "job_dashboard.png")
    context.close()
