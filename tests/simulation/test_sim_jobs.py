"""Simulated jobs through the real parts: Celery workers (subprocesses), Redis, the platform's engine.
A 1,000-client job runs a few rounds; its records are bulk and per selected client only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ManagedProcess, make_user, wait_until
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientResult, ClientState, Job, JobStatus, Participant, RoundStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT_S = 60.0


def launch(tag: str, **overrides: Any) -> Job:
    owner = make_user(f"owner-{tag}", None)
    config = {
        "name": f"sim-{tag}",
        "backend": "simulation",
        "sim_clients": 1000,
        "rounds": 3,
        "clients_per_round": 100,
        "local_epochs": 5,
        "batch_size": 10,
        "lr": 0.1,
        **overrides,
    }
    return create_job(owner, parse_job_config(config))


def wait_for_job(
    job: Job, statuses: tuple[str, ...] = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PAUSED)
) -> Job:
    def done() -> Job | None:
        job.refresh_from_db()
        return job if job.status in statuses else None

    try:
        return wait_until(done, timeout_s=JOB_TIMEOUT_S, interval_s=0.2, what=f"job {job.pk} to finish")
    except AssertionError:
        log = "\n".join(e.message for e in reversed(job.log_entries.all()))
        raise AssertionError(f"job {job.pk} is {job.status}; its log:\n{log}") from None


def test_a_thousand_client_job_runs_in_the_engine(celery_worker: dict[str, ManagedProcess]) -> None:
    job = wait_for_job(launch("thousand", sim_params={"batch_clients": 40}))
    assert job.status == JobStatus.COMPLETED, (job.error, [e.message for e in job.log_entries.all()][:5])
    assert job.committed_rounds == 3
    assert Participant.objects.filter(job=job, device__isnull=True).count() == 1000
    for rnd in job.rounds.filter(status=RoundStatus.COMMITTED):
        # Over-selection (130%): 130 chosen, the 100 fastest report; rows only for the chosen.
        assert rnd.client_results.count() == 130
        assert rnd.client_results.filter(state=ClientState.REPORTED).count() == 100
        assert rnd.client_results.filter(state=ClientState.LATE).count() == 30
        assert rnd.availability["encoding"] == "compact-v1" and len(rnd.availability["states"]) == 1000
        assert rnd.availability["states"].count("s") == 130
        assert rnd.metrics["sim_wall_s"] > 0 and rnd.accuracy is not None
    # Reports counted once: each reporter's Participant row counts as many rounds as its reported rows.
    reported = ClientResult.objects.filter(job=job, state=ClientState.REPORTED)
    assert (
        sum(Participant.objects.filter(job=job).values_list("rounds_reported", flat=True))
        == reported.count()
        == 300
    )
    # 1.4 digits per client: a few rounds move the model a little; the loss must fall round on round.
    losses = list(
        job.rounds.filter(status=RoundStatus.COMMITTED).order_by("number").values_list("loss", flat=True)
    )
    assert losses[0] > losses[1] > losses[2], losses
