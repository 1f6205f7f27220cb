"""In Debian's chromium: upload a LEAF file on the data sets page, see its page (clients, charts), have a
malformed file refused with its reasons, and watch the new-job form's parameter count follow the MLP's
hidden widths. Screenshots: test-artifacts/dataset_page.png, dataset_refused.png, job_form_model.png."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import browser, logged_in_page, save_screenshot  # noqa: F401 - a fixture
from tests.conftest import make_user
from tests.own_data.test_dataset_upload import digits_leaf

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
TIMEOUT_MS = 60_000


@pytest.fixture
def operator(transactional_db: None) -> Any:
    return make_user("data-op", OPERATORS, password="data-pass-1", for_subprocess=True)


def test_upload_a_leaf_file_and_see_its_page(
    operator: Any,
    daphne_server: str,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    leaf = tmp_path / "digits_leaf.json"
    leaf.write_bytes(digits_leaf(12))
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"a,b,label\n1,2,0\n")
    context, page = logged_in_page(
        browser, daphne_server, "/jobs/datasets/", "data-op", "data-pass-1", timeout_ms=TIMEOUT_MS
    )

    page.set_input_files("#id_file", str(bad))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-problems")).to_contain_text("broken.npz is not an NPZ archive")
    save_screenshot(page, "dataset_refused.png")

    page.fill("#id_name", "digits by user")
    page.fill("#id_feature_shape", "1,8,8")
    page.set_input_files("#id_file", str(leaf))
    page.click("#upload-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/datasets/\d+/$"))
    expect(page.locator("[data-testid=clients]")).to_contain_text("12 (samples per client")
    expect(page.locator("[data-testid=classes]")).to_have_text("10")
    for chart in ("#chart-labels", "#chart-client-sizes", "#chart-label-mix"):
        expect(page.locator(f"{chart} .main-svg").first).to_be_visible()
    bars = page.evaluate("document.getElementById('chart-label-mix').data.length")
    assert bars == 10  # one stacked trace per class
    save_screenshot(page, "dataset_page.png")

    page.click("text=New job on it")
    expect(page).to_have_url(re.compile(r"/jobs/new/\?dataset_id=\d+$"))
    expect(page.locator("#id_dataset")).to_have_value("uploaded")
    size = page.locator("[data-model-size]")
    expect(size).to_contain_text("55,210 parameters")
    page.fill("#id_model_param__mlp__hidden", "32")
    expect(size).to_contain_text("2,410 parameters")
    page.fill("#id_model_param__mlp__hidden", "0")
    expect(size).to_contain_text("hidden every item must be >= 1")
    page.fill("#id_model_param__mlp__hidden", "32, 16")
    expect(size).to_contain_text(f"{64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10:,} parameters")
    page.locator("#model-size").scroll_into_view_if_needed()
    save_screenshot(page, "job_form_model.png")
    context.close()
