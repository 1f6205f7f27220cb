"""The configuration that lets the lab recover without a person: the broker's visibility timeout against
the longest task, the watchdog on beat, and Redis's append-only file in docker-compose. Read from the
real config objects, nothing faked (the worker's survival of an outage: tests/resilience/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config.celery import VISIBILITY_TIMEOUT_S, WATCHDOG_INTERVAL_S, app

REPO = Path(__file__).resolve().parents[2]
DAY_S = 24 * 3600


def _task_hard_limits() -> dict[str, float]:
    app.loader.import_default_modules()  # what a worker imports at start: every app's tasks module
    default = float(app.conf.task_time_limit)
    return {
        name: float(task.time_limit or default)
        for name, task in app.tasks.items()
        if not name.startswith("celery.")
    }


def test_visibility_timeout_outlasts_every_task_so_none_is_delivered_while_it_runs() -> None:
    limits = _task_hard_limits()
    assert {"training.tasks.run_client", "training.tasks.exact_leave_one_out"} <= set(limits)
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    longest = max(limits.values())
    assert longest >= DAY_S  # a phone's run may last a whole 24 h round deadline
    # Margin for the wait in a worker's prefetch buffer and for clock differences between hosts.
    assert VISIBILITY_TIMEOUT_S >= longest + 3600, (VISIBILITY_TIMEOUT_S, longest)


def test_visibility_timeout_outlasts_the_longest_round_deadline_a_countdown_waits_for() -> None:
    """A round's deadline close is sent with a countdown of the deadline; the worker holds it
    unacknowledged until it is due, so the visibility timeout must outlast the longest deadline too."""
    from training.jobs.config import JobConfigError, parse_job_config  # noqa: PLC0415

    longest = parse_job_config({"round_deadline_s": DAY_S}).round_deadline_s
    with pytest.raises(JobConfigError):
        parse_job_config({"round_deadline_s": DAY_S + 1})
    assert VISIBILITY_TIMEOUT_S >= longest + 3600


def test_the_visibility_timeout_can_be_lowered_for_tests_only_through_the_environment() -> None:
    code = "from config.celery import app; print(app.conf.broker_transport_options['visibility_timeout'])"
    env = dict(os.environ, FEDFLEET_BROKER_VISIBILITY_TIMEOUT_S="7")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "7", result.stderr
    env["FEDFLEET_BROKER_VISIBILITY_TIMEOUT_S"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "FEDFLEET_BROKER_VISIBILITY_TIMEOUT_S" in result.stderr


def test_beat_runs_the_watchdog_every_few_seconds_and_drops_stale_ticks() -> None:
    entries = [e for e in app.conf.beat_schedule.values() if e["task"] == "training.tasks.watchdog"]
    assert len(entries) == 1
    entry = entries[0]
    period = float(entry["schedule"])
    assert 1 <= period <= 10 and period == WATCHDOG_INTERVAL_S
    # A tick older than one period is replaced by the next: a worker back from an outage runs one.
    assert 0 < entry["options"]["expires"] <= period


def test_the_watchdog_task_exists_and_goes_to_the_training_queue() -> None:
    app.loader.import_default_modules()
    assert "training.tasks.watchdog" in app.tasks
    route = app.amqp.router.route({}, "training.tasks.watchdog")
    assert route["queue"].name == "training"


def test_beat_schedule_loads_as_celery_beat_reads_it() -> None:
    from celery.beat import Scheduler  # noqa: PLC0415

    scheduler = Scheduler(app, lazy=True)
    scheduler.setup_schedule()
    entry = scheduler.schedule["training-watchdog"]
    assert entry.task == "training.tasks.watchdog"
    assert entry.schedule.run_every.total_seconds() == WATCHDOG_INTERVAL_S
    assert entry.options["expires"] == WATCHDOG_INTERVAL_S


def test_docker_compose_redis_keeps_an_append_only_file_in_its_volume() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "always"
    # The image's working dir, where the AOF goes, is the volume: it survives the container.
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
