"""The dashboard of a 200-round, 1,000-client simulated job stays small: the heatmap and participation
chart are drawn by groups of clients, the availability record is one compact string per round. (Its load
time is measured by bench/simulation.py, not here.)"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import make_user
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientResult, ClientState, Job, Participant, Round, RoundStatus

pytestmark = pytest.mark.django_db

CLIENTS, ROUNDS, PER_ROUND = 1000, 200, 100


def build_job() -> Job:
    """A finished job's record, in bulk: 1,000 clients, 200 rounds, 130 selected and 100 reported each;
    clients alternate by halves (FedLaAvg's setting) every 10 rounds."""
    config = parse_job_config(
        {"backend": "simulation", "sim_clients": CLIENTS, "clients_per_round": PER_ROUND, "rounds": ROUNDS}
    )
    job = create_job(make_user("owner-dash", None), config)
    Participant.objects.bulk_create(
        [
            Participant(
                job=job,
                client_index=i,
                num_samples=5,
                label_counts=[5 if c == i % 10 else 0 for c in range(10)],
            )
            for i in range(CLIENTS)
        ]
    )
    now = timezone.now()
    rounds = []
    for r in range(1, ROUNDS + 1):
        half = (r // 10) % 2
        states = ["i" if (i * 2 // CLIENTS) == half else "o" for i in range(CLIENTS)]
        online = [i for i in range(CLIENTS) if states[i] == "i"]
        chosen = online[(r * 7) % 300 :][:130]
        for i in chosen:
            states[i] = "s"
        rounds.append(
            Round(
                job=job, number=r, status=RoundStatus.COMMITTED, goal=PER_ROUND, min_reports=80,
                deadline_at=now + timedelta(seconds=60), finished_at=now, accuracy=0.5 + r / 1000, loss=1.0,
                metrics={"sim_wall_s": 3.0}, availability={"encoding": "compact-v1", "states": "".join(states)},
            )
        )  # fmt: skip
    Round.objects.bulk_create(rounds)
    results = []
    for rnd in Round.objects.filter(job=job):
        chosen = [i for i, c in enumerate(rnd.availability["states"]) if c == "s"]
        for n, i in enumerate(chosen):
            state = ClientState.REPORTED if n < PER_ROUND else ClientState.LATE
            results.append(ClientResult(job=job, round=rnd, client_index=i, state=state, num_samples=5))
    ClientResult.objects.bulk_create(results, batch_size=5000)
    Job.objects.filter(pk=job.pk).update(committed_rounds=ROUNDS, status="completed")
    job.refresh_from_db()
    return job


def test_a_thousand_client_dashboard_is_drawn_by_groups() -> None:
    from training.web.views import snapshot_with_figures  # noqa: PLC0415

    job = build_job()
    snapshot = snapshot_with_figures(job)
    heatmap = snapshot["figures"]["availability_heatmap"]["data"][0]
    assert len(heatmap["z"]) == 50 and all(len(row) == ROUNDS for row in heatmap["z"])
    assert heatmap["y"][0] == "clients 0–19"
    participation = snapshot["figures"]["participation"]["data"]
    assert all(len(trace.get("y", trace.get("x", []))) == 50 for trace in participation)
    assert snapshot["availability"]["group_size"] == 20
    # Groups follow the halves: group 0 (clients 0-19) is offline in round 10 and reports in round 1..9.
    column_10 = heatmap["y"].index("clients 0–19")
    assert heatmap["text"][column_10][9] != heatmap["text"][column_10][0]
    # Everything the page loads stays well under a megabyte-and-a-half of JSON.
    assert len(json.dumps(snapshot)) < 1_500_000
    # Counts stay exact after grouping: every report is in the participation rows.
    from training.analysis.availability import job_report  # noqa: PLC0415

    report = job_report(job)
    assert sum(row.times_reported for row in report.participation) == ROUNDS * PER_ROUND
    assert sum(row.times_selected for row in report.participation) == ROUNDS * 130
