"""On-demand exact leave-one-out (AnalysisRun rows): size limits, the task body, and the comparison with
the Fed-Influence estimate (Pearson r and Spearman ρ, as ALGORITHMS.md §5 reports them).

The replay itself is replay.RecordAnchoredReplay (its docstring says what "exact" means on a lab). It
costs about (phones × recorded updates) local trainings, so it is refused above a size limit with a
message that says which limit and by how much.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from training.analysis.context import job_context
from training.analysis.influence import AnalysisBusy, analyse_job
from training.analysis.replay import DEFINITION, RecordAnchoredReplay, ReplayResult
from training.fl.loo import compare
from training.jobs import dispatch, services
from training.jobs.config import INFLUENCE_ALGORITHMS, parse_job_config
from training.jobs.events import send_job_event
from training.models import (
    AnalysisKind,
    AnalysisRun,
    AnalysisStatus,
    ClientInfluence,
    ClientResult,
    ClientState,
    Job,
    LogLevel,
    RoundAnalysis,
    RoundStatus,
)

log = logging.getLogger(__name__)

MAX_PHONES = 50
MAX_TRAININGS = 10_000  # phones replayed × recorded updates: the replay's local trainings, roughly
MAX_PARAMETERS = 100_000
PROGRESS_EVERY_S = 1.0


def replay_size(job: Job) -> tuple[int, int]:
    """(phones whose updates entered a committed round, recorded updates in committed rounds)."""
    reported = ClientResult.objects.filter(
        job=job, state=ClientState.REPORTED, round__status=RoundStatus.COMMITTED
    )
    return reported.values("device_id").distinct().count(), reported.count()


def refusal(job: Job) -> str | None:
    """Why this job is too big (or otherwise unfit) for the exact replay; None if it can run."""
    if job.committed_rounds == 0:
        return "no committed round to replay yet"
    config = parse_job_config(job.config)
    if config.algorithm not in INFLUENCE_ALGORITHMS:
        return (
            f"exact leave-one-out replays FedAvg-style rounds ({', '.join(INFLUENCE_ALGORITHMS)}); "
            f"{config.algorithm} is not supported"
        )
    phones, updates = replay_size(job)
    if phones > MAX_PHONES:
        return (
            f"{phones} phones took part; the exact replay retrains the job once per phone and is limited to "
            f"{MAX_PHONES} (the influence estimate is what scales)"
        )
    if phones * updates > MAX_TRAININGS:
        return (
            f"the exact replay would retrain about {phones * updates:,} local updates ({phones} phones × "
            f"{updates} recorded updates), over the limit of {MAX_TRAININGS:,} — a small job only"
        )
    parameters = job_context(job).num_parameters
    if parameters > MAX_PARAMETERS:
        return f"the model has {parameters:,} parameters, over the exact replay's limit of {MAX_PARAMETERS:,}"
    return None


def estimate_at(job: Job, round_no: int) -> dict[str, dict[str, float | None]]:
    """The Fed-Influence estimate of every tracked client at one round (from the ClientInfluence rows)."""
    rows = ClientInfluence.objects.filter(job=job, round_number=round_no)
    return {
        str(r.device_id): {"loss": r.loss, "loss_first_order": r.loss_first_order, "accuracy": r.accuracy}
        for r in rows
    }


def _clean(value: Any) -> Any:
    """NaN/inf (a constant side in a correlation) become None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def agreement(estimate: dict[str, dict[str, float | None]], exact: ReplayResult) -> dict[str, Any]:
    """Pearson and Spearman between the estimate and the exact replay, per measure."""
    out: dict[str, Any] = {}
    for measure, truth in (
        ("loss", {c: v.loss for c, v in exact.clients.items()}),
        ("loss_first_order", {c: v.loss for c, v in exact.clients.items()}),
        ("accuracy", {c: v.accuracy for c, v in exact.clients.items()}),
    ):
        estimated = {c: e[measure] for c, e in estimate.items() if e.get(measure) is not None}
        out[measure] = compare(estimated, truth)  # type: ignore[arg-type]
    return out


def build_result(job: Job, exact: ReplayResult, estimate_seconds: float) -> dict[str, Any]:
    names = dict(job.participants.values_list("device_id", "device__name"))
    estimate = estimate_at(job, exact.round)
    clients = {
        cid: {
            "name": names.get(int(cid), cid),
            "loss": v.loss,
            "accuracy": v.accuracy,
            "params_norm": v.params_norm,
            "seconds": v.seconds,
            "replay_mismatch": exact.replay_mismatch.get(cid),
        }
        for cid, v in exact.clients.items()
    }
    return _clean(
        {
            "round": exact.round,
            "definition": DEFINITION,
            "baseline": exact.baseline,
            "clients": clients,
            "estimate": estimate,
            "agreement": agreement(estimate, exact) if estimate else None,
            "estimate_seconds": estimate_seconds,
            "exact_seconds": exact.seconds,
            "cost_ratio": estimate_seconds / exact.seconds if exact.seconds > 0 else None,
            "trainings": exact.trainings,
            "base_reproduction_error": exact.base_reproduction_error,
        }
    )


def _set_progress(run: AnalysisRun, done: int, total: int, message: str) -> None:
    progress = done / total if total else 1.0
    AnalysisRun.objects.filter(pk=run.pk).update(progress=progress, message=message[:300])
    run.progress, run.message = progress, message
    send_job_event(run.job_id, "analysis.updated", run=run.snapshot())


def run_exact_leave_one_out(run_id: int) -> None:
    """The task body: replay, compare, record. A redelivered task reruns a run left "running".

    Single-threaded like the agent on a phone (OMP_NUM_THREADS=1): honest replays then reproduce the
    phones' float results, and tiny models do not pay for thread contention on a shared worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(run_id)
    finally:
        torch.set_num_threads(threads)


def _run(run_id: int) -> None:
    run = AnalysisRun.objects.select_related("job", "requested_by").get(pk=run_id)
    if run.status in (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED):
        return
    started_at = timezone.now()
    AnalysisRun.objects.filter(pk=run.pk).update(status=AnalysisStatus.RUNNING, started_at=started_at)
    run.status, run.started_at = AnalysisStatus.RUNNING, started_at
    job = run.job
    upto = int(run.params.get("round") or job.committed_rounds)
    started = time.perf_counter()
    try:
        try:
            analyse_job(job.pk)  # the estimate of every round the replay covers must exist
        except AnalysisBusy:
            log.info("job %s: analysis busy; comparing with what is there", job.pk)
        context = job_context(job)
        replay = RecordAnchoredReplay(job, context, upto)
        last = [0.0]

        def progress(done: int, total: int, message: str) -> None:
            if done in (0, total) or time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                _set_progress(run, done, total, message)

        exact = replay.run(progress)
        estimate_seconds = (
            RoundAnalysis.objects.filter(job=job, round_number__lte=upto).aggregate(s=Sum("seconds"))["s"]
            or 0.0
        )
        result = build_result(job, exact, float(estimate_seconds))
    except (Exception, SoftTimeLimitExceeded) as exc:  # noqa: BLE001 - any failure is recorded on the row
        log.exception("exact leave-one-out run %s failed", run.pk)
        _finish(
            run, AnalysisStatus.FAILED, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}"
        )
        services.log(job.pk, f"exact leave-one-out run #{run.pk} failed: {exc}", level=LogLevel.ERROR)
        return
    _finish(run, AnalysisStatus.COMPLETED, time.perf_counter() - started, result=result)
    loss = (result.get("agreement") or {}).get("loss") or {}
    services.log(
        job.pk,
        f"exact leave-one-out run #{run.pk} of rounds 1–{upto}: {len(exact.clients)} replays in "
        f"{exact.seconds:.1f} s; estimate vs exact loss influence Pearson {_fmt(loss.get('pearson'))}, "
        f"Spearman {_fmt(loss.get('spearman'))}",
    )


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _finish(
    run: AnalysisRun, status: str, seconds: float, *, result: dict[str, Any] | None = None, error: str = ""
) -> None:
    finished = timezone.now()
    AnalysisRun.objects.filter(pk=run.pk).update(
        status=status,
        finished_at=finished,
        cost_seconds=seconds,
        progress=1.0 if status == AnalysisStatus.COMPLETED else run.progress,
        message="done" if status == AnalysisStatus.COMPLETED else "failed",
        result=result or {},
        error=error[:5000],
    )
    run.refresh_from_db()
    send_job_event(run.job_id, "analysis.updated", run=run.snapshot())


def request_exact_leave_one_out(job: Job, by: AbstractBaseUser) -> AnalysisRun:
    """Queue the exact leave-one-out replay of the job's committed rounds (small jobs only)."""
    problem = refusal(job)
    if problem:
        raise services.JobActionError(problem)
    with transaction.atomic():
        busy = job.analysis_runs.filter(
            kind=AnalysisKind.EXACT_LOO, status__in=(AnalysisStatus.QUEUED, AnalysisStatus.RUNNING)
        ).first()
        if busy is not None:
            raise services.JobActionError(f"exact leave-one-out run #{busy.pk} is {busy.status} already")
        run = AnalysisRun.objects.create(
            job=job,
            kind=AnalysisKind.EXACT_LOO,
            params={"round": job.committed_rounds},
            requested_by=by,
            message="queued",
        )
        services.log(
            job.pk,
            f"exact leave-one-out of rounds 1–{job.committed_rounds} requested by {by.get_username()} "
            f"(run #{run.pk})",
        )
        send_job_event(job.pk, "analysis.updated", run=run.snapshot())
        dispatch.exact_leave_one_out_on_commit(run.pk)
    return run
