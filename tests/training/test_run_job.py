"""`manage.py run_job`: the form's validation (exit 2 with field errors), job creation, and --wait output."""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from training.management.commands import run_job
from training.models import Job

from .web_factories import make_job, make_round, operator, queued_starts, viewer  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def run(*args: str) -> tuple[list[dict[str, Any]], str]:
    out, err = StringIO(), StringIO()
    call_command("run_job", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()], err.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"rounds": 0}, "rounds: must be between 1 and 10000"),
        ({"partition": "dirichlet"}, "partition_param: the dirichlet partition needs its parameter"),
        ({"device_tags": ["ok", "no way"]}, "device_tags: tags may use"),
        ({"rounds": 3, "colour": "red"}, "__all__: unknown field(s): colour"),
        ("{not json", "is not valid JSON"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_config_exits_2_with_the_field_error(
    tmp_path: Path, operator: Any, config: Any, expected: str
) -> None:
    with pytest.raises(CommandError) as raised:
        run("--config", write_config(tmp_path, config), "--owner", operator.username)
    assert raised.value.returncode == 2
    assert expected in str(raised.value)
    assert Job.objects.count() == 0


@pytest.mark.slow  # a fresh interpreter imports Django and torch: seconds on a busy machine
def test_invalid_config_exit_status_from_the_shell(tmp_path: Path) -> None:
    """The real process exit code and stderr (validation happens before any database access)."""
    env = {
        **os.environ,
        "FEDFLEET_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "run_job", "--config", write_config(tmp_path, {"rounds": 0, "lr": -1})],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "rounds: must be between 1 and 10000" in result.stderr
    assert "lr: must be between" in result.stderr
    assert result.stdout == ""


@pytest.mark.django_db
def test_owner_must_exist_and_be_an_operator(tmp_path: Path, viewer: Any) -> None:
    config = write_config(tmp_path, {"rounds": 2})
    for owner, message in (("nobody", "no active user"), (viewer.username, "is not an operator")):
        with pytest.raises(CommandError) as raised:
            run("--config", config, "--owner", owner)
        assert raised.value.returncode == 2 and message in str(raised.value)


@pytest.mark.django_db
def test_valid_config_creates_and_queues_the_job(tmp_path: Path, operator: Any, queued_starts: list) -> None:
    lines, err = run(
        "--config", write_config(tmp_path, {"name": "cli", "rounds": 3}), "--owner", operator.username
    )
    job = Job.objects.get()
    assert lines == [{"job": job.pk, "status": "queued"}]
    assert job.name == "cli" and job.rounds_total == 3 and job.owner == operator
    assert queued_starts == [job.pk]
    assert f"job #{job.pk}" in err


@pytest.mark.django_db
def test_wait_prints_each_committed_round_once_then_returns(operator: Any) -> None:
    job = make_job(operator, rounds=3)
    make_round(job, 1, accuracy=0.5, loss=1.2, wall_s=2.0)
    emitted: list[dict[str, Any]] = []
    polls = iter(range(100))

    def fake_sleep(seconds: float) -> None:
        """Between polls the 'engine' moves on: an abandoned attempt, then rounds 2 and 3, then completion."""
        step = next(polls)
        if step == 0:
            make_round(job, 2, status="abandoned")
        elif step == 1:
            make_round(job, 2, attempt=2, accuracy=0.8, loss=0.6)
        elif step == 3:
            make_round(job, 3, accuracy=0.91, loss=0.3)
            Job.objects.filter(pk=job.pk).update(status="completed")

    done, timed_out = run_job.wait_for_job(job.pk, emit=emitted.append, timeout_s=60, sleep=fake_sleep)
    assert not timed_out and done.status == "completed"
    assert [(line["round"], line["attempt"], line["accuracy"]) for line in emitted] == [
        (1, 1, 0.5),
        (2, 2, 0.8),
        (3, 1, 0.91),
    ]
    assert emitted[0]["wall_s"] == 2.0
    summary = run_job.summary_line(done, timed_out=False, waited_s=1.0)
    assert (
        summary["final_accuracy"] == 0.91
        and summary["rounds_to_90"] == 3
        and summary["committed_rounds"] == 3
    )


@pytest.mark.django_db
def test_wait_times_out_with_exit_1(tmp_path: Path, operator: Any, queued_starts: list) -> None:
    config = write_config(tmp_path, {"rounds": 2})
    with pytest.raises(CommandError) as raised:
        call_command(
            "run_job",
            "--config",
            config,
            "--owner",
            operator.username,
            "--wait",
            "--timeout",
            "0.2",
            "--poll-interval",
            "0.05",
            stdout=(out := StringIO()),
            stderr=StringIO(),
        )
    assert raised.value.returncode == 1 and "still queued" in str(raised.value)
    summary = json.loads(out.getvalue().splitlines()[-1])
    assert summary["summary"] is True and summary["timed_out"] is True and summary["status"] == "queued"


@pytest.mark.django_db
@pytest.mark.parametrize(("final_status", "returncode"), [("completed", 0), ("failed", 1), ("cancelled", 1)])
def test_wait_exit_code_follows_the_final_status(
    tmp_path: Path, operator: Any, monkeypatch: pytest.MonkeyPatch, final_status: str, returncode: int
) -> None:
    def create_finished_job(owner: Any, config: Any) -> Job:
        job = make_job(owner, status=final_status, rounds=1)
        make_round(job, 1, accuracy=0.93, loss=0.2)
        if final_status == "failed":
            Job.objects.filter(pk=job.pk).update(error="no eligible phones")
        return job

    monkeypatch.setattr(run_job.services, "create_job", create_finished_job)
    config = write_config(tmp_path, {"rounds": 1})
    try:
        lines, _ = run("--config", config, "--owner", operator.username, "--wait")
        code = 0
    except CommandError as exc:
        code = exc.returncode
        lines = []
    assert code == returncode
    if final_status == "completed":
        assert lines[0]["round"] == 1 and lines[-1]["status"] == "completed"
        assert lines[-1]["final_accuracy"] == 0.93
