"""Client influence after every committed round, in the training queue (ALGORITHMS.md §5, DESIGN "A round" 4).

`analyse_job(job_id)` brings a job's analysis up to its last committed round:

- **In order, idempotent.** Rounds are folded into the Fed-Influence tracker strictly in order, from the
  first one not yet analysed; a task for round n+1 that runs before round n's also does round n. A round
  counts as analysed once its RoundAnalysis row exists, so re-running is a no-op. The tracker's state is a
  safetensors file (storage.influence_state_path) written atomically *before* the rows: after a crash in
  between, the rows are rebuilt from the tracker's own per-round records; if the file is lost, the
  tracker is rebuilt by replaying the recorded rounds (deterministic: the Fisher samples are seeded).
- **One analyser per job.** A file lock under the job's analysis dir; a second task waits for it, then
  finds the work done (or does what is left).
- **Budget and cost.** The job's influence_budget caps Fisher products per round (InfluenceConfig.budget);
  each round's seconds and Fisher products are recorded on its RoundAnalysis row and shown.
- **Which data.** The Fisher products use the server's validation data — the job's held-out test set —
  at the round's starting global model, because phones upload no per-sample gradients (FISHER_NOTE).
- **Backdoor test.** When the job declares one, the attack success rate of each round's global model on
  the triggered test set (training.fl.misbehaviour.backdoor_success_rate).
- **Automatic exclusion.** After each analysed round, exclusion.choose_exclusions on the cumulative loss
  influence; each exclusion goes through services.exclude_participant (row, log, job.exclusion event).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from django.db import transaction

from training.analysis.context import (
    JobAnalysisContext,
    RecordedRound,
    global_weights,
    job_context,
    recorded_round,
)
from training.analysis.exclusion import ExclusionPolicy, choose_exclusions
from training.fl.influence import FISHER_SOURCE, InfluenceConfig, InfluenceTracker, RoundCost
from training.fl.misbehaviour import Trigger, backdoor_success_rate
from training.fl.nets import build_model_from_spec, set_weights
from training.fl.wire import save_tensors
from training.jobs import services, storage
from training.jobs.config import INFLUENCE_ALGORITHMS
from training.jobs.events import send_job_event
from training.models import (
    ClientInfluence,
    Exclusion,
    ExclusionAction,
    Job,
    LogLevel,
    RoundAnalysis,
)

log = logging.getLogger(__name__)

FISHER_NOTE = (
    f"Fisher–vector products use the {FISHER_SOURCE} (the job's held-out test set, {{samples}} samples per "
    "Fisher sample) at each round's starting global model: phones upload no per-sample gradients, so "
    "the Hessians of their local steps are approximated on the server's data."
)
LOCK_WAIT_S = 60.0
LOCK_FILE = "lock"
JOB_KEY = "fedfleet.job"  # safetensors metadata: which job the state belongs to (JobAnalysisContext.identity)


class AnalysisBusy(RuntimeError):
    """Another worker holds this job's analysis lock (the task retries later)."""


@contextlib.contextmanager
def job_analysis_lock(job_id: int, *, timeout_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """An exclusive lock on the job's analysis files, across worker processes on this host."""
    directory = storage.analysis_dir(job_id)
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(directory / LOCK_FILE, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AnalysisBusy(
                        f"job {job_id}: analysis lock still held after {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def influence_config(context: JobAnalysisContext) -> InfluenceConfig:
    budget = context.config.influence_budget
    return InfluenceConfig(budget=budget or None, seed=context.config.seed)


def new_tracker(context: JobAnalysisContext) -> InfluenceTracker:
    spec = context.model_spec
    return InfluenceTracker(lambda: build_model_from_spec(spec), context.test, influence_config(context))


def load_tracker(context: JobAnalysisContext) -> InfluenceTracker:
    """The job's tracker from its state file, or a fresh one (no file yet, or an unreadable one)."""
    path = storage.influence_state_path(context.job_id)
    if path.exists():
        spec = context.model_spec
        try:
            if _state_owner(path) != context.identity:
                raise ValueError("the file belongs to an earlier job with the same id")
            return InfluenceTracker.load(path, lambda: build_model_from_spec(spec), context.test)
        except (ValueError, KeyError, OSError) as exc:  # rebuilt by replaying the recorded rounds
            log.warning("job %s: influence state not usable (%s); rebuilding it", context.job_id, exc)
    return new_tracker(context)


def _state_owner(path: Any) -> str | None:
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get(JOB_KEY)


def save_tracker(context: JobAnalysisContext, tracker: InfluenceTracker) -> None:
    import json  # noqa: PLC0415

    from training.fl.influence import META_KEY  # noqa: PLC0415

    tensors, meta = tracker.state()
    metadata = {META_KEY: json.dumps(meta), JOB_KEY: context.identity}
    save_tensors(storage.influence_state_path(context.job_id), tensors, metadata)


def observe(context: JobAnalysisContext, tracker: InfluenceTracker, recorded: RecordedRound) -> RoundCost:
    """Fold one committed round into the tracker from the files the engine kept."""
    before = global_weights(context.job_id, recorded.number - 1)
    after = global_weights(context.job_id, recorded.number)
    names = list(before)
    updates = [(u.client_id, u.num_samples, u.delta(names)) for u in recorded.updates]
    return tracker.observe_round(
        recorded.number,
        before,
        updates,
        context.config.lr,
        {u.client_id: u.steps for u in recorded.updates},
        server_lr=context.server_lr,
        global_weights_after=after,
    )


def attack_success_rate(context: JobAnalysisContext, round_no: int) -> float:
    """The declared backdoor's success on round `round_no`'s global model (test set, trigger stamped)."""
    config = context.config
    model = build_model_from_spec(context.model_spec)
    set_weights(model, global_weights(context.job_id, round_no))
    x, y = context.test
    trigger = Trigger(size=config.backdoor_trigger_size, value=config.backdoor_trigger_value)
    return backdoor_success_rate(model, x, y, trigger, config.backdoor_target)


# ------------------------------------------------------------------------------------ rows from records


def round_entries(tracker: InfluenceTracker, round_no: int) -> dict[str, dict[str, Any]]:
    """Each tracked client's record for one round (clients appear from their first round on)."""
    out: dict[str, dict[str, Any]] = {}
    for cid, record in tracker.records.items():
        index = round_no - record.first_round
        if 0 <= index < len(record.rounds) and record.rounds[index]["round"] == round_no:
            out[cid] = dict(record.rounds[index])
            out[cid]["truncated"] = any(r <= round_no for r in record.truncated_layers.values())
    return out


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def write_round(
    context: JobAnalysisContext,
    round_no: int,
    tracker: InfluenceTracker | None,
    attack: float | None,
) -> dict[str, dict[str, Any]]:
    """The round's ClientInfluence rows and its RoundAnalysis row (the "analysed" mark); returns the
    entries written. Runs inside the caller's transaction."""
    entries = round_entries(tracker, round_no) if tracker is not None else {}
    rows = [
        ClientInfluence(
            job_id=context.job_id,
            device_id=int(cid),
            round_number=round_no,
            selected=bool(e["selected"]),
            loss=_finite(e.get("loss")),
            loss_first_order=_finite(e.get("loss_first_order")) or 0.0,
            round_loss_first_order=_finite(e.get("round_loss_first_order")) or 0.0,
            params_norm=_finite(e.get("params_norm")) or 0.0,
            accuracy=_finite(e.get("accuracy")),
            truncated=bool(e["truncated"]),
        )
        for cid, e in entries.items()
    ]
    ClientInfluence.objects.bulk_create(rows, ignore_conflicts=True)
    cost = next((c for c in tracker.costs if c.round == round_no), None) if tracker is not None else None
    baseline = tracker.baseline if tracker is not None and tracker.baseline.get("round") == round_no else {}
    RoundAnalysis.objects.get_or_create(
        job_id=context.job_id,
        round_number=round_no,
        defaults={
            "influence": cost is not None,
            "seconds": cost.seconds if cost else 0.0,
            "fisher_products": cost.fisher_products if cost else 0,
            "per_sample_gradients": cost.per_sample_gradients if cost else 0,
            "segments": cost.segments if cost else 0,
            "evaluations": cost.evaluations if cost else 0,
            "baseline_loss": _finite(baseline.get("loss")),
            "baseline_accuracy": _finite(baseline.get("accuracy")),
            "attack_success_rate": attack,
        },
    )
    return entries


# ------------------------------------------------------------------------------------ auto-exclusion


def cumulative_loss_influence(entries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Client -> cumulative influence on the test loss (exact evaluation, first order when absent)."""
    out = {}
    for cid, e in entries.items():
        value = _finite(e.get("loss"))
        out[cid] = value if value is not None else (_finite(e.get("loss_first_order")) or 0.0)
    return out


def protected_clients(job: Job) -> set[str]:
    """Phones an operator put back after an exclusion: the rule leaves them to the operator."""
    latest: dict[int, str] = {}
    for participant_device, action in (
        Exclusion.objects.filter(job=job).order_by("at", "id").values_list("participant__device_id", "action")
    ):
        latest[participant_device] = action
    return {str(device) for device, action in latest.items() if action == ExclusionAction.INCLUDE}


def apply_auto_exclusion(
    job: Job, context: JobAnalysisContext, round_no: int, entries: dict[str, dict[str, Any]]
) -> list[str]:
    if not context.config.auto_exclude or not entries or job.status not in services.EXCLUDABLE_STATUSES:
        return []
    participants = {p.client_id: p for p in job.participants.select_related("device")}
    policy = ExclusionPolicy.of(context.config)
    influence = {c: v for c, v in cumulative_loss_influence(entries).items() if c in participants}
    chosen = choose_exclusions(
        round_no,
        influence,
        participants=len(participants),
        excluded={c for c, p in participants.items() if p.excluded},
        protected=protected_clients(job),
        policy=policy,
    )
    for cid in chosen:
        reason = (
            f"cumulative influence on the test loss {influence[cid]:+.4g} < 0 after round {round_no} (the "
            f"model would be better without it); rule: {policy.describe(len(participants))}"
        )
        services.exclude_participant(job, participants[cid], reason=reason, round_number=round_no, auto=True)
    return chosen


# ------------------------------------------------------------------------------------ the pipeline


@dataclass
class AnalysisOutcome:
    analysed: list[int]  # rounds whose rows this call wrote
    excluded: list[str]  # clients excluded automatically
    influence: bool
    reason: str


@functools.cache
def warm_up() -> None:
    """torch.func's first call imports torch._dynamo and friends (about a second): once per worker
    process, outside the timed estimate, so a round's recorded cost is the estimate's own."""
    from torch.func import grad  # noqa: PLC0415

    grad(lambda x: (x * x).sum())(torch.zeros(1))


def analyse_job(job_id: int, *, lock_timeout_s: float = LOCK_WAIT_S) -> AnalysisOutcome:
    """Analyse every committed round of the job not analysed yet, in order (see the module docstring)."""
    job = Job.objects.get(pk=job_id)
    context = job_context(job)
    if not context.has_work:
        return AnalysisOutcome([], [], False, context.influence_reason)
    warm_up()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a prefork worker shares the machine with its siblings and the phones
    try:
        with job_analysis_lock(job_id, timeout_s=lock_timeout_s):
            return _analyse_locked(job, context)
    finally:
        torch.set_num_threads(previous_threads)


def _analyse_locked(job: Job, context: JobAnalysisContext) -> AnalysisOutcome:
    job.refresh_from_db()
    done = set(RoundAnalysis.objects.filter(job=job).values_list("round_number", flat=True))
    tracker = load_tracker(context) if context.influence_enabled else None
    outcome = AnalysisOutcome([], [], context.influence_enabled, context.influence_reason)
    for round_no in range(1, job.committed_rounds + 1):
        needs_rows = round_no not in done
        needs_tracker = tracker is not None and (tracker.last_round or 0) < round_no
        if not (needs_rows or needs_tracker):
            continue
        if tracker is not None and needs_tracker:
            recorded = recorded_round(job, context.config, round_no)
            if recorded.updates:
                observe(context, tracker, recorded)
                save_tracker(context, tracker)  # before the rows: they can be rebuilt from it
        if not needs_rows:
            continue
        attack = attack_success_rate(context, round_no) if context.backdoor_test else None
        with transaction.atomic():
            if round_no == 1:
                _note_settings(job, context)
            entries = write_round(context, round_no, tracker, attack)
            job.refresh_from_db()
            outcome.excluded += apply_auto_exclusion(job, context, round_no, entries)
            send_job_event(job.pk, "analysis.updated", round=round_no)
        outcome.analysed.append(round_no)
    return outcome


def _note_settings(job: Job, context: JobAnalysisContext) -> None:
    """Say once, in the job's log, what the analysis does for this job and on which data."""
    if context.influence_enabled:
        budget = context.config.influence_budget
        services.log(
            job.pk,
            f"client influence {context.influence_reason}; budget "
            f"{f'{budget} Fisher products per round' if budget else 'one Fisher sample per local step'}; "
            f"Fisher products on the server's test set",
            round_number=1,
        )
    elif context.config.auto_exclude:
        services.log(
            job.pk,
            f"automatic exclusion is set but client influence is {context.influence_reason}: nobody is excluded",
            level=LogLevel.WARNING,
            round_number=1,
        )


def should_analyse(job_config: dict[str, Any]) -> bool:
    """Cheap check for the round_committed receiver (no data loaded): may this job need analysis?"""
    if job_config.get("backend") == "simulation":  # not built yet for simulated clients (see README)
        return False
    influence = (
        job_config.get("influence", "auto") != "off" and job_config.get("algorithm") in INFLUENCE_ALGORITHMS
    )
    return influence or bool(job_config.get("backdoor_test"))
