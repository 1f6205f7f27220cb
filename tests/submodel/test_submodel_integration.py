"""A FedSubAvg job end to end through the real parts: Celery workers, Redis, the ADB wire protocol and
virtual phones running the agent's `request` and `train` commands. Nothing here is faked."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import ManagedProcess, VirtualLab, wait_until
from tests.training.test_engine_integration import committed_numbers, launch, register
from training.jobs import storage
from training.models import ClientResult, ClientState, JobStatus, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Each phone runs the agent twice a round (request, then train); on a 2-core machine shared with other
# jobs that takes a while, so the deadline and the wait are generous.
DEADLINE_S = 150
JOB_TIMEOUT_S = 420.0


@pytest.mark.parametrize("privacy", ["default", "none"])
def test_two_round_fedsubavg_job_on_three_phones(
    celery_worker: dict[str, ManagedProcess], virtual_phones: Callable[..., VirtualLab], privacy: str
) -> None:
    register(virtual_phones(3, seed=71), f"subm-{privacy}")
    job = launch(
        f"subm-{privacy}",
        rounds=2,
        dataset="recsys",
        dataset_params={"num_items": 20_000, "num_clients": 3, "samples_per_user": 100},
        partition="natural",
        model="ctr",
        algorithm="fedsubavg",
        algorithm_params={"privacy": privacy},
        lr=0.002,
        batch_size=32,
        round_deadline_s=DEADLINE_S,
    )

    def finished() -> bool:
        job.refresh_from_db()
        return job.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED)

    try:
        wait_until(finished, timeout_s=JOB_TIMEOUT_S, interval_s=0.5, what="the submodel job to finish")
    finally:  # what each phone did, for a failure's report
        for r in ClientResult.objects.filter(job=job).select_related("round"):
            print(r.round.number, r.round.attempt, r.device_id, r.state, r.reason, r.push_s, r.train_s)

    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2]
    full_model_bytes = storage.model_export_path(job.pk, 0).stat().st_size
    for rnd in job.rounds.filter(status=RoundStatus.COMMITTED):
        assert 0.0 <= rnd.metrics["auc"] <= 1.0 and rnd.metrics["logloss"] == pytest.approx(rnd.loss)
        reported = list(rnd.client_results.filter(state=ClientState.REPORTED))
        assert len(reported) == 3
        for result in reported:
            # Each phone asked for its rows, downloaded only those (plus the dense layers) and sent back
            # only their updates: far below what the full model costs each way.
            assert result.metrics["request_rows"] > 0
            assert 0 < result.metrics["payload_bytes_down"] < full_model_bytes / 5
            assert 0 < result.metrics["payload_bytes_up"] < full_model_bytes / 5
            # The server kept the phone's request, which its upload was checked against.
            directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, result.device_id)
            assert (directory / "request.safetensors").exists()
    if privacy == "none":  # no decoys to draw: U is never written nor sent
        assert not storage.union_path(job.pk).exists()
        return
    # The union U went to each phone once, with its first request step; later rounds sent only the
    # request config (a few hundred bytes).
    union_bytes = storage.union_path(job.pk).stat().st_size
    by_round = {
        (r.round.number, r.device_id): r.metrics["request_bytes_down"]
        for r in ClientResult.objects.filter(job=job, state=ClientState.REPORTED).select_related("round")
    }
    for device_id in {device for _, device in by_round}:
        assert by_round[(1, device_id)] > union_bytes > by_round[(2, device_id)] > 0
