"""End to end in Debian's chromium: launch a FedSubAvg job from the form (recsys data, CTR model, the
default privacy preset) on three virtual phones through real workers, and watch the submodel section
of the live dashboard: AUC per round gaining points without a reload, bytes against the full model, the
preset with its ε, and AUC as the job's headline. Saves test-artifacts/submodel_dashboard.png."""

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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

# Each phone runs the agent twice a round (request, then train) on a shared 2-core machine.
LIVE_TIMEOUT_MS = 240_000
AUC_POINTS = "document.getElementById('chart-submodel_auc').data?.[0]?.x?.length ?? 0"
BYTES_TRACES = "document.getElementById('chart-submodel_bytes').data?.length ?? 0"


@pytest.fixture
def lab_ready(transactional_db: None, virtual_phones: Any) -> Any:
    """An operator and three online phones tagged `browser-sub` (set up before the browser starts:
    Playwright's sync API runs an event loop in this thread, where Django refuses ORM calls)."""
    register_online_phones(virtual_phones(3, seed=53), prefix="bs", tag="browser-sub")
    return make_user("sub-op", OPERATORS, password="sub-pass-1", for_subprocess=True)


def test_launch_a_submodel_job_and_watch_its_section(
    lab_ready: Any,
    daphne_server: str,
    celery_worker: Any,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context, page = logged_in_page(
        browser, daphne_server, "/jobs/new/", "sub-op", "sub-pass-1", timeout_ms=LIVE_TIMEOUT_MS
    )

    page.fill("#id_name", "browser submodel job")
    page.select_option("#id_dataset", "recsys")
    page.fill("#id_dataset_param__recsys__num_items", "20000")
    page.fill("#id_dataset_param__recsys__num_clients", "3")
    page.fill("#id_dataset_param__recsys__samples_per_user", "100")
    page.select_option("#id_partition", "natural")
    page.select_option("#id_model", "ctr")
    page.select_option("#id_algorithm", "fedsubavg")
    page.select_option("#id_algorithm_param__fedsubavg__privacy", "default")
    expect(page.locator("#id_algorithm_param__fedsubavg__privacy option:checked")).to_contain_text("ε 2.02")
    page.fill("#id_rounds", "2")
    page.fill("#id_clients_per_round", "3")
    page.fill("#id_local_epochs", "1")
    page.fill("#id_batch_size", "32")
    page.fill("#id_lr", "0.002")
    page.fill("#id_round_deadline_s", "150")
    page.fill("#id_device_tags", "browser-sub")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#live-indicator")).to_have_class(re.compile(r"\bconnected\b"))
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    section = page.locator("[data-testid=submodel-section]")
    expect(section.locator("[data-testid=privacy-preset]")).to_have_text("default")
    expect(section.locator("[data-testid=privacy-epsilon]")).to_have_text("2.019")
    expect(section.locator("[data-testid=server-view]")).to_contain_text("secure aggregation")

    page.wait_for_function(f"{AUC_POINTS} >= 1")
    page.wait_for_function(f"{AUC_POINTS} >= 2")  # round 2's point arrived on the open page
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate(BYTES_TRACES) >= 2  # the submodel's bytes and the full model's, per round
    expect(page.locator("#headline-label")).to_have_text("AUC")
    expect(page.locator("[data-testid=headline]")).to_have_text(re.compile(r"^0\.\d{3}$"))
    summary = page.locator("[data-testid=submodel-summary]")
    expect(summary).to_contain_text("×")
    auc = page.evaluate("document.getElementById('chart-submodel_auc').data[0].y.at(-1)")
    assert 0.0 <= auc <= 1.0

    save_screenshot(page, "submodel_dashboard.png")

    # The compare page overlays a CTR job's AUC, not its click accuracy.
    job_id = re.search(r"/jobs/(\d+)/", page.url).group(1)
    page.goto(f"/jobs/compare/?ids={job_id}")
    expect(page.locator("#compare-table")).to_contain_text("Final AUC")
    page.wait_for_function("document.getElementById('compare-chart').layout?.yaxis?.title?.text === 'AUC'")
    compared = page.evaluate("document.getElementById('compare-chart').data[0].y.at(-1)")
    assert compared == pytest.approx(auc)
    context.close()
