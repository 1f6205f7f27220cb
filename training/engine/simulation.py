"""The simulation backend's side of the engine: N in-process clients instead of phones, in the same rounds.

A simulated job is a job like any other — the same Job, Round and ClientResult records, the same strategy
selection (over-selection, each client's eligibility from its availability model), deadlines, minimum
reports, aggregation (closing.py), analyses and dashboards. What differs is who trains:

    prepare_simulation   partition among N clients; Participant rows without phones (bulk), round 0
    start_sim_round      select among the clients online at the round's simulated time, work out from
                         their profiles who would report in time (push, train, pull; dropouts), write the
                         selected clients' ClientResults in bulk and send their training as
                         train_batch tasks on the training queue                               [training]
    train_batch          train a batch of clients in-process (sim_training.py), write their updates once
                                                                                               [training]

Only selected clients get a ClientResult; the rest of the population appears in Round.availability as
one compact string (a character per client, AVAILABILITY_CODES), not as rows.

Simulated time is apart from real time: a client's push/train/pull seconds on its ClientResult and the
round's `sim_wall_s` (in Round.metrics) are what the clients' profiles say the round would have taken;
the round's wall_s stays the real time the platform spent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from django.db import transaction
from django.utils import timezone

from training.engine.closing import MAX_ROUND_ATTEMPTS
from training.engine.configure import base_agent_config
from training.engine.jobdata import build_strategy, job_data, job_model_spec, load_job_dataset
from training.engine.sim_clients import dropped_out, local_steps, population
from training.fl.evaluate import evaluate_weights
from training.fl.nets import initial_weights
from training.fl.partition import partition_dataset
from training.fl.strategy import ClientInfo, ServerState, Strategy
from training.jobs import dispatch, services, storage
from training.jobs.config import JobConfig
from training.jobs.events import send_job_event
from training.jobs.simulation_config import COMPACT, sim_param
from training.models import (
    ClientResult,
    ClientState,
    Job,
    Participant,
    Round,
    RoundStatus,
    sim_client_id,
    sim_client_index,
)

log = logging.getLogger(__name__)

# A round whose slot of simulated time has too few clients online moves to the next slot (a new attempt);
# after this many empty slots in a row the job pauses (the availability model leaves too few online).
MAX_EMPTY_SLOTS = 100
PARTITION_PARAM_NAMES = {"dirichlet": "alpha", "shards": "shards_per_client", "quantity": "sigma"}


def is_simulation(config: JobConfig) -> bool:
    return config.backend == "simulation"


# ------------------------------------------------------------------------------------------- preparation
def partition_params(config: JobConfig) -> dict[str, Any]:
    param = PARTITION_PARAM_NAMES.get(config.partition)
    if not param or config.partition_param is None:
        return {}
    value = config.partition_param
    return {param: int(value) if param == "shards_per_client" else value}


_PARTS: dict[int, list[np.ndarray]] = {}


def client_parts(job: Job, config: JobConfig) -> list[np.ndarray]:
    """Each simulated client's indices into the training set (the same partition call as the lab's
    prepare_job, with the clients in place of the phones); derived again per process, never stored."""
    if job.pk not in _PARTS:
        splits = job_data(job, config)
        _PARTS[job.pk] = partition_dataset(
            config.partition, splits.train, config.sim_clients, seed=config.seed, **partition_params(config)
        )
    return _PARTS[job.pk]


def prepare_simulation(job: Job, config: JobConfig) -> None:
    """Partition the data among the N clients, record them (bulk) and checkpoint round 0."""
    splits = load_job_dataset(config)
    try:
        parts = partition_dataset(
            config.partition, splits.train, config.sim_clients, seed=config.seed, **partition_params(config)
        )
    except ValueError as exc:
        services.fail_job(job, f"cannot partition {config.dataset} for {config.sim_clients} clients: {exc}")
        return
    _PARTS[job.pk] = parts
    labels = splits.train.labels
    rows = [
        Participant(
            job=job,
            device=None,
            client_index=index,
            num_samples=len(indices),
            label_counts=np.bincount(labels[indices], minlength=splits.num_classes).tolist(),
            shard_sha256="",
        )
        for index, indices in enumerate(parts)
    ]
    spec = job_model_spec(config, splits)
    strategy = build_strategy(config, len(parts), sum(len(p) for p in parts))
    state = strategy.initial_state(initial_weights(spec, config.seed))
    evaluation = evaluate_weights(spec, state.weights, splits.test.x, splits.test.y)
    storage.save_checkpoint(job.pk, 0, state, {"accuracy": evaluation.accuracy, "loss": evaluation.loss})
    with transaction.atomic():
        Participant.objects.bulk_create(rows, batch_size=2000)
        job.last_accuracy, job.last_loss = evaluation.accuracy, evaluation.loss
        job.save(update_fields=["last_accuracy", "last_loss"])
        services.log(
            job.pk,
            f"prepared: {len(parts)} simulated clients ({config.sim_availability} availability), "
            f"{config.partition} partition of {len(splits.train)} {config.dataset} samples; "
            f"initial accuracy {evaluation.accuracy:.3f}",
        )
        if services.mark_running(job):
            dispatch.start_round_on_commit(job.pk)


# ------------------------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class SimSelection:
    chosen: list[int]  # client indices, in the strategy's order
    eligible: int
    availability: dict[str, str]  # the compact record (COMPACT)


def select_clients(
    job: Job,
    config: JobConfig,
    strategy: Strategy,
    state: ServerState,
    round_no: int,
    attempt: int,
    clock: float,
) -> SimSelection:
    """The lab's selection (engine/selection.py) over simulated clients: eligible = online at the round's
    simulated time and not excluded; the strategy picks with the same seeded generator."""
    from training.engine.selection import _round_rng  # noqa: PLC0415 - the one seeded generator

    rows = list(job.participants.values_list("client_index", "num_samples", "last_round", "excluded"))
    online = population(job.pk, config).online(clock)
    codes = ["o"] * config.sim_clients
    infos = []
    for index, samples, last_round, excluded in rows:
        if excluded:
            codes[index] = "x"
        elif online[index]:
            codes[index] = "i"
            infos.append(
                ClientInfo(client_id=sim_client_id(index), num_samples=samples, last_round=last_round)
            )
    goal = min(config.selection_count, len(infos))
    chosen_ids = strategy.select(state, round_no, infos, goal, _round_rng(config, round_no, attempt))
    chosen = [sim_client_index(cid) for cid in chosen_ids]
    for index in chosen:
        codes[index] = "s"
    return SimSelection(
        chosen=chosen, eligible=len(infos), availability={"encoding": COMPACT, "states": "".join(codes)}
    )


# ------------------------------------------------------------------------------------------- a round
def sim_clock(job: Job, config: JobConfig) -> float:
    """Simulated seconds at which the next round attempt starts: one round_interval_s after the last
    attempt's (0 for the first). Without empty slots, round r starts at (r − 1) · round_interval_s."""
    last = job.rounds.order_by("-number", "-attempt").values_list("metrics", flat=True).first()
    if not isinstance(last, dict) or "sim_clock_s" not in last:
        return 0.0
    return float(last["sim_clock_s"]) + sim_param(config.sim_params, "round_interval_s")


@dataclass(frozen=True)
class Outcome:
    index: int
    push_s: float
    train_s: float
    pull_s: float
    state: str  # SELECTED (will train), LATE or DROPPED
    reason: str = ""

    @property
    def finish_s(self) -> float:
        return self.push_s + self.train_s + self.pull_s


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def plan_outcomes(
    job: Job,
    config: JobConfig,
    strategy: Strategy,
    state: ServerState,
    round_no: int,
    attempt: int,
    chosen: list[int],
    goal: int,
) -> tuple[list[Outcome], float]:
    """Who would report, who would be late and who drops out, from the clients' profiles; and the round's
    simulated wall time (the goal-th report, or the deadline when the goal is not met in time)."""
    people = population(job.pk, config)
    sizes = dict(job.participants.filter(client_index__in=chosen).values_list("client_index", "num_samples"))
    probe = (
        strategy.configure(state, round_no, [sim_client_id(chosen[0])], base_agent_config(config))
        if chosen
        else []
    )
    down = payload_bytes(dict(probe[0].tensors)) if probe else 0
    up = sum(
        int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        for shape, dtype in strategy.expected_upload(state.weights).values()
    )
    max_steps = config.algorithm_params.get("max_steps") or config.algorithm_params.get("local_steps")
    deadline = config.round_deadline_s
    planned: list[Outcome] = []
    for index in chosen:
        steps = local_steps(
            sizes[index], config.batch_size, config.local_epochs, int(max_steps) if max_steps else None
        )
        push_s, train_s, pull_s = people.timings(index, steps, down, up)
        planned.append(Outcome(index, push_s, train_s, pull_s, ClientState.SELECTED))
    outcomes: list[Outcome] = []
    on_time: list[Outcome] = []
    for o in planned:
        if dropped_out(config, round_no, attempt, o.index):
            outcomes.append(Outcome(o.index, o.push_s, 0.0, 0.0, ClientState.DROPPED, "simulated dropout"))
        elif o.finish_s > deadline:
            why = f"simulated: would report at {o.finish_s:.1f} s, after the {deadline:.0f} s deadline"
            outcomes.append(replace(o, state=ClientState.LATE, reason=why))
        else:
            on_time.append(o)
    on_time.sort(key=lambda o: (o.finish_s, o.index))
    for o in on_time[goal:]:
        why = f"goal reached before it reported (simulated {o.finish_s:.1f} s)"
        outcomes.append(replace(o, state=ClientState.LATE, reason=why))
    reporters = on_time[:goal]
    outcomes.extend(reporters)
    if len(reporters) >= goal and reporters:
        wall = reporters[-1].finish_s
    elif any(o.state == ClientState.LATE for o in outcomes):
        wall = deadline
    else:
        wall = max((o.finish_s for o in reporters), default=0.0)
    return outcomes, wall


def start_sim_round(
    job: Job,
    config: JobConfig,
    strategy: Strategy,
    state: ServerState,
    round_no: int,
    attempt: int,
    started: float,
) -> None:
    """start_round for a simulated job (rounds.py calls it): select, plan, record, send the batches."""
    clock = sim_clock(job, config)
    selection = select_clients(job, config, strategy, state, round_no, attempt, clock)
    if len(selection.chosen) < config.min_reports:
        services.log(
            job.pk,
            f"round {round_no}: waiting for clients — {len(selection.chosen)} of the needed "
            f"{config.min_reports} are online at simulated {clock:.0f} s; trying the next slot",
            round_number=round_no,
        )
        # The simulated clock does not move while nobody trains: skip the round's slot, as a lab would
        # wait for phones — the next attempt looks at the next slot of simulated time.
        with transaction.atomic():
            rnd = Round.objects.create(
                job=job,
                number=round_no,
                attempt=attempt,
                status=RoundStatus.ABANDONED,
                goal=config.clients_per_round,
                min_reports=config.min_reports,
                deadline_at=timezone.now(),
                availability=selection.availability,
                metrics={"sim_clock_s": clock},
                reason=f"only {len(selection.chosen)} clients online",
                finished_at=timezone.now(),
            )
            send_job_event(job.pk, "round.abandoned", round=rnd.snapshot())
        if attempt >= MAX_ROUND_ATTEMPTS:
            services.pause_for_operator(
                job, f"round {round_no}: too few simulated clients online {attempt} times"
            )
        else:
            dispatch.start_round_on_commit(job.pk)
        return
    goal = min(config.clients_per_round, len(selection.chosen))
    outcomes, sim_wall = plan_outcomes(
        job, config, strategy, state, round_no, attempt, selection.chosen, goal
    )
    batch_size = sim_param(config.sim_params, "batch_clients")
    training = [o for o in outcomes if o.state == ClientState.SELECTED]
    batch_of = {o.index: position // batch_size for position, o in enumerate(training)}
    with transaction.atomic():
        rnd = Round.objects.create(
            job=job,
            number=round_no,
            attempt=attempt,
            status=RoundStatus.TRAINING,
            goal=goal,
            min_reports=min(config.min_reports, len(selection.chosen)),
            deadline_at=timezone.now() + timedelta(seconds=config.round_deadline_s),
            availability=selection.availability,
            metrics={"sim_wall_s": sim_wall, "sim_clock_s": clock},
        )
        now = timezone.now()
        ClientResult.objects.bulk_create(
            [
                ClientResult(
                    job=job,
                    round=rnd,
                    device=None,
                    client_index=o.index,
                    state=o.state,
                    reason=o.reason,
                    push_s=o.push_s,
                    train_s=o.train_s,
                    pull_s=o.pull_s,
                    metrics={"sim_batch": batch_of[o.index]} if o.index in batch_of else {},
                    dispatched_at=now,
                )
                for o in outcomes
            ],
            batch_size=1000,
        )
        rnd.select_s = time.monotonic() - started
        rnd.save(update_fields=["select_s"])
        send_job_event(job.pk, "round.started", round=rnd.snapshot(), clients=[])
        services.log(
            job.pk,
            f"round {round_no}{'' if attempt == 1 else f' (attempt {attempt})'}: selected {len(selection.chosen)} of "
            f"{selection.eligible} online simulated clients, goal {goal}; {len(training)} train, "
            f"{len(outcomes) - len(training)} late or dropped (simulated round {sim_wall:.1f} s)",
            round_number=round_no,
        )
        batches: dict[int, list[int]] = {}
        for index, batch in batch_of.items():
            batches.setdefault(batch, []).append(index)
        for batch in sorted(batches):
            dispatch.train_batch_on_commit(rnd.pk, sorted(batches[batch]))
        if not batches:  # nobody trains: the round closes (and is abandoned) at once
            dispatch.close_round_on_commit(rnd.pk)
        dispatch.close_round_at_deadline_on_commit(rnd.pk, countdown=config.round_deadline_s)


def redrive_batches(rnd: Round, results: list[ClientResult]) -> int:
    """Send again the batches of in-flight simulated clients no live run holds (the watchdog's way)."""
    batches: dict[int, list[int]] = {}
    for result in results:
        batches.setdefault(int(result.metrics.get("sim_batch", 0)), []).append(result.client_index or 0)
    for batch in sorted(batches):
        dispatch.train_batch(rnd.pk, sorted(batches[batch]))
    return len(batches)
