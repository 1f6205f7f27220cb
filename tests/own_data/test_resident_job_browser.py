"""In chromium: a completed phone-resident job's page says which data each phone used (its own file, the
count it reported) and offers the final model as ONNX with its check. Screenshot: resident_job.png."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from accounts.roles import OPERATORS
from tests.browser_support import (  # noqa: F401 - browser is a fixture
    browser,
    logged_in_page,
    register_online_phones,
    save_screenshot,
)
from tests.conftest import make_user, wait_until
from tests.training.test_engine_integration import wait_for_job
from training.engine.phone_data import write_seed_files
from training.fl.datasets import load_digits
from training.fl.partition import partition_dataset
from training.jobs import exports
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import JobStatus

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def finished_job(
    transactional_db: None, virtual_phones: Any, celery_worker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A completed 2-round phone-resident job on 3 seeded phones, run before the browser starts."""
    seed = tmp_path_factory.mktemp("seed")
    train = load_digits(seed=0).train
    write_seed_files(train.x.numpy(), train.y.numpy(), partition_dataset("iid", train, 3, seed=5), Path(seed))
    register_online_phones(
        virtual_phones(3, seed=181, extra=["--seed-data", str(seed)]), prefix="rb", tag="rb"
    )
    owner = make_user("resident-op", OPERATORS, password="resident-pass-1", for_subprocess=True)
    config = {
        "name": "own data stays home",
        "rounds": 2,
        "clients_per_round": 3,
        "over_selection": 1.0,
        "min_clients": 3,
        "local_epochs": 1,
        "device_tags": ["rb"],
        "data_on_phone": True,
        "phone_data_report": True,
    }
    job = wait_for_job(create_job(owner, parse_job_config(config)), (JobStatus.COMPLETED, JobStatus.FAILED))
    assert job.status == JobStatus.COMPLETED, job.error
    wait_until(lambda: exports.onnx_status(job), timeout_s=60, what="the ONNX export")
    return job


def test_the_job_page_says_which_data_each_phone_used(
    finished_job: Any,
    daphne_server: str,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    path = f"/jobs/{finished_job.pk}/"
    context, page = logged_in_page(
        browser, daphne_server, path, "resident-op", "resident-pass-1", timeout_ms=60_000
    )
    expect(page.locator("#job-data")).to_contain_text(
        "on the phones (data/ in each work dir; no shard sent; counts reported)"
    )
    expect(page.locator("#onnx-download")).to_be_visible()
    expect(page.locator("#onnx-check")).to_contain_text("predictions agree 100%")
    page.click("#participants-box summary")
    rows = page.locator("#participants tr")
    expect(rows).to_have_count(3)
    for index in range(3):
        expect(rows.nth(index)).to_contain_text(re.compile(r"its own train\.npz on the phone: \d+ samples"))
    save_screenshot(page, "resident_job.png")
    context.close()
