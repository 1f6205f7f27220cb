"""`manage.py run_job --config job.json [--owner USER] [--wait] [--timeout S]`: launch a job headless.

The config goes through `parse_job_config`, the validator the form and the API use; an invalid one prints
one line per field and exits 2. With `--wait` the command polls the database (state lives there, not in
Celery) and prints one JSON line per newly committed round, then a summary line; it exits 0 when the job
completed and 1 when it failed, was cancelled, or the timeout passed first. Progress about the command
itself goes to stderr, so stdout holds only JSON lines a script can read.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Q

from accounts.roles import is_operator
from training.jobs import services
from training.jobs.config import JobConfig, JobConfigError, parse_job_config
from training.models import ClientState, Job, JobStatus, Round, RoundStatus
from training.web.charts import job as charts

EXIT_INVALID = 2
EXIT_NOT_COMPLETED = 1
TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
DEFAULT_POLL_INTERVAL_S = 0.5


def load_config(source: str) -> JobConfig:
    """Read and validate a job config file ('-' = stdin); raise CommandError(returncode=2) on any problem."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {source}: {exc.strerror or exc}", returncode=EXIT_INVALID) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{source} is not valid JSON: {exc}", returncode=EXIT_INVALID) from None
    try:
        return parse_job_config(data)
    except JobConfigError as exc:
        lines = "\n".join(f"  {field}: {message}" for field, message in exc.errors.items())
        raise CommandError(f"invalid job config in {source}:\n{lines}", returncode=EXIT_INVALID) from None


def resolve_owner(username: str | None) -> Any:
    users = get_user_model().objects.filter(is_active=True)
    if username:
        user = users.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"no active user {username!r}", returncode=EXIT_INVALID)
    else:
        user = users.filter(is_superuser=True).order_by("pk").first()
        if user is None:
            raise CommandError("no superuser to own the job; pass --owner USER", returncode=EXIT_INVALID)
    if not is_operator(user):
        raise CommandError(f"{user.get_username()} is not an operator", returncode=EXIT_INVALID)
    return user


def round_line(rnd: Round) -> dict[str, Any]:
    """What one committed round prints (reported is annotated by `new_committed_rounds`)."""
    return {
        "job": rnd.job_id,
        "round": rnd.number,
        "attempt": rnd.attempt,
        "accuracy": rnd.accuracy,
        "loss": rnd.loss,
        "reported": getattr(rnd, "reported", None),
        "wall_s": round(rnd.wall_s, 3),
        "train_s": round(rnd.train_s, 3),
        "bytes_down": rnd.bytes_down,
        "bytes_up": rnd.bytes_up,
    }


def new_committed_rounds(job_id: int, after: int) -> list[Round]:
    return list(
        Round.objects.filter(job_id=job_id, status=RoundStatus.COMMITTED, number__gt=after)
        .annotate(reported=Count("client_results", filter=Q(client_results__state=ClientState.REPORTED)))
        .order_by("number")
    )


def summary_line(job: Job, *, timed_out: bool, waited_s: float) -> dict[str, Any]:
    rounds = [r.snapshot() for r in job.rounds.all()]
    return {
        "summary": True,
        "job": job.pk,
        "status": job.status,
        "timed_out": timed_out,
        "committed_rounds": job.committed_rounds,
        "rounds_total": job.rounds_total,
        "final_accuracy": charts.final_accuracy(rounds),
        "final_loss": job.last_loss,
        "rounds_to_90": charts.rounds_to_target(rounds, 0.9),
        "rounds_wall_s": round(sum(r["timings"]["wall"] for r in charts.committed_rounds(rounds)), 3),
        "waited_s": round(waited_s, 3),
        "error": job.error,
    }


def wait_for_job(
    job_id: int,
    *,
    emit: Callable[[dict[str, Any]], None],
    timeout_s: float | None,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Job, bool]:
    """Poll until the job is terminal or `timeout_s` passes; emit each round once, as it commits.

    Returns the job as last read and whether the timeout ended the wait.
    """
    started = clock()
    printed = 0
    while True:
        job = Job.objects.get(pk=job_id)
        # Read the rounds after the status, so a job seen as terminal has all its rounds printed.
        for rnd in new_committed_rounds(job_id, printed):
            emit(round_line(rnd))
            printed = rnd.number
        if job.status in TERMINAL_STATUSES:
            return job, False
        if timeout_s is not None and clock() - started >= timeout_s:
            return job, True
        sleep(poll_interval_s)


class Command(BaseCommand):
    help = "Launch a federated job from a JSON config (validated like the web form); optionally wait for it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", required=True, help="job config JSON file ('-' reads stdin)")
        parser.add_argument("--owner", help="username of the job's owner (default: the first superuser)")
        parser.add_argument("--wait", action="store_true", help="wait for the job, printing each round")
        parser.add_argument("--timeout", type=float, default=None, help="give up waiting after S seconds")
        parser.add_argument(
            "--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S, help="database poll period (s)"
        )

    def emit(self, line: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(line))
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        config = load_config(options["config"])
        owner = resolve_owner(options["owner"])
        if options["timeout"] is not None and options["timeout"] <= 0:
            raise CommandError("--timeout must be positive", returncode=EXIT_INVALID)
        job = services.create_job(owner, config)
        self.stderr.write(f"job #{job.pk} “{job.name}” queued by {owner.get_username()}")
        self.stderr.flush()
        if not options["wait"]:
            self.emit({"job": job.pk, "status": job.status})
            return
        started = time.monotonic()
        job, timed_out = wait_for_job(
            job.pk,
            emit=self.emit,
            timeout_s=options["timeout"],
            poll_interval_s=max(options["poll_interval"], 0.05),
        )
        self.emit(summary_line(job, timed_out=timed_out, waited_s=time.monotonic() - started))
        if timed_out:
            raise CommandError(
                f"job #{job.pk} still {job.status} after {options['timeout']:g} s",
                returncode=EXIT_NOT_COMPLETED,
            )
        if job.status != JobStatus.COMPLETED:
            detail = f": {job.error}" if job.error else ""
            raise CommandError(f"job #{job.pk} {job.status}{detail}", returncode=EXIT_NOT_COMPLETED)
