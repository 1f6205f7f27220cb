"""In Debian's chromium: launch a 300-client simulation from the form and watch its dashboard, whose
availability heatmap is drawn by groups of clients. Saves test-artifacts/sim_form.png, sim_dashboard.png."""

from __future__ import annotations

import re
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import browser, logged_in_page, save_screenshot  # noqa: F401 - browser is a fixture
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

TIMEOUT_MS = 120_000


@pytest.fixture
def operator_ready(transactional_db: None) -> Any:
    return make_user("sim-op", OPERATORS, password="sim-pass-1", for_subprocess=True)


def test_launch_a_simulation_and_see_its_grouped_heatmap(
    operator_ready: Any,
    daphne_server: str,
    celery_worker: Any,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context, page = logged_in_page(
        browser, daphne_server, "/jobs/new/", "sim-op", "sim-pass-1", timeout_ms=TIMEOUT_MS
    )
    page.fill("#id_name", "browser simulation")
    page.select_option("#id_backend", "simulation")
    page.fill("#id_sim_clients", "0")
    page.fill("#id_rounds", "4")
    page.fill("#id_clients_per_round", "30")
    page.select_option("#id_sim_availability", "alternating")
    page.fill("#id_sim_params", '{"period_rounds": 2, "groups": 2}')
    page.click("#job-form button[type=submit]")
    expect(page.locator("[data-testid=error-sim_clients]")).to_contain_text("1 to 10,000 clients")
    page.locator("#id_sim_clients").scroll_into_view_if_needed()
    save_screenshot(page, "sim_form.png")

    page.fill("#id_sim_clients", "300")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=TIMEOUT_MS)
    page.reload()
    rows = "document.getElementById('chart-availability_heatmap').data?.[0]?.y?.length ?? 0"
    page.wait_for_function(f"{rows} > 0")
    assert page.evaluate(rows) == 50  # 300 clients in 50 groups of 6
    labels = page.evaluate("document.getElementById('chart-availability_heatmap').data[0].y")
    assert labels[0] == "clients 0–5"
    save_screenshot(page, "sim_dashboard.png")
    context.close()
