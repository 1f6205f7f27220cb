"""In Debian's chromium: the client-influence section of a job dashboard draws its heatmap and ranked
table from a real record, and an operator excludes the harmful phone with its button. Saves
test-artifacts/influence_dashboard.png."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from accounts.roles import OPERATORS
from tests.browser_support import ARTIFACTS, browser, logged_in_page, save_screenshot  # noqa: F401
from tests.conftest import make_user
from training.analysis import loo
from training.analysis.influence import analyse_job
from training.engine import tasks
from training.models import AnalysisRun, Job, JobStatus

from .recorded_job import record_rounds, tiny_job

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

TIMEOUT_MS = 60_000


@pytest.fixture
def analysed_job(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> tuple[Job, Any]:
    """A paused 4-phone job with 3 recorded rounds (phone rec-2 flipping labels), analysed; made before
    the browser starts (Playwright's sync API runs an event loop in which Django refuses ORM calls)."""
    monkeypatch.setattr(tasks.start_round, "delay_on_commit", lambda job_id: None)  # no engine here
    torch.set_num_threads(1)
    operator = make_user("influence-op", OPERATORS, password="influence-pass-1", for_subprocess=True)
    job = tiny_job(operator, phones=4, clients_per_round=3, min_clients=2)
    record_rounds(job, 3, {"rec-2": "label_flip"})
    analyse_job(job.pk)
    run = AnalysisRun.objects.create(job=job, params={"round": 3}, requested_by=operator)
    loo.run_exact_leave_one_out(run.pk)  # in-process here; the button queues it for the training worker
    Job.objects.filter(pk=job.pk).update(status=JobStatus.PAUSED)
    return job, operator


def test_influence_section_and_excluding_the_harmful_phone(
    analysed_job: tuple[Job, Any],
    daphne_server: str,
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    job, _ = analysed_job
    context, page = logged_in_page(
        browser, daphne_server, f"/jobs/{job.pk}/", "influence-op", "influence-pass-1", timeout_ms=TIMEOUT_MS
    )

    rows = page.locator("#influence-ranking tr")
    expect(rows).to_have_count(4, timeout=TIMEOUT_MS)  # Daphne's first snapshot loads the data set
    expect(rows.first.locator("td").nth(1)).to_have_text("rec-2")  # most harmful first
    page.wait_for_function("document.getElementById('chart-influence_heatmap').data?.[0]?.z?.length === 4")
    expect(page.locator("#influence-summary")).to_contain_text("analysed up to round 3")
    expect(page.locator("#influence-note")).to_contain_text("test set")
    expect(page.locator("#analysis-runs li").first).to_contain_text("completed")
    expect(page.locator("#analysis-runs li").first).to_contain_text("Pearson r")
    expect(rows.first.locator("td").nth(7)).not_to_have_text("–")  # the exact value beside the estimate
    page.wait_for_function("document.getElementById('chart-loo_scatter').data?.[0]?.x?.length === 4")
    save_screenshot(page, "influence_dashboard.png")

    page.once("dialog", lambda dialog: dialog.accept())
    rows.first.locator("button", has_text="Exclude").click()
    expect(page.locator("ul.messages")).to_contain_text("rec-2 excluded from job")
    expect(page.locator("#influence-ranking tr").first).to_contain_text("excluded by an operator")
    expect(page.locator("#influence-ranking tr").first.locator("button")).to_have_text("Include")
    # The exclusion is marked on the accuracy chart, after the round it happened.
    page.wait_for_function(
        "(document.getElementById('chart-accuracy_loss').layout?.annotations ?? [])"
        ".some((a) => a.text.includes('rec-2'))"
    )
    page.locator("#influence-section").screenshot(path=str(ARTIFACTS / "influence_section.png"))
    context.close()
