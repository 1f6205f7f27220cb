"""The exact leave-one-out of a *recorded* job: the ground truth for the influence estimate.

What "true" leave-one-out means on a device lab. The definition (ALGORITHMS.md §5) is: retrain the job
without client c — same seeds, same selections — and compare the final models on the test set. On a
lab the server cannot rerun the phones, and it does not know how each phone behaves (a label flipper
looks like any other phone). What it has: every committed round's global model, the update each
phone uploaded, the phones that entered each round, their step counts, the config.json each received
(with its per-client seed) and the data shard it wrote for each phone. So:

    Before c's first round nothing changes: the replay starts from the recorded checkpoint there.
    In every later round, each other phone k's update is re-derived at the counterfactual model w′:

        Δ′_k = Δ_k(recorded) + [ train_k(w′) − train_k(w) ]

    where train_k(·) is honest local training on the shard the server gave k, with k's recorded seed,
    step count and config, and w is the recorded global model the phone actually started from. The
    round is then aggregated with the job's own strategy and aggregator (c's update left out; a round
    that had only c is removed).

For a phone that trained honestly, train_k(w) reproduces its upload, so Δ′_k = train_k(w′): exactly
retraining it. A misbehaving phone keeps its *recorded* update level and only its sensitivity to the
starting model is modelled as honest (exact for a free rider, which uploads zeros and reports no steps;
approximate for a label flipper; wrong for a boosted model-replacement update, whose sensitivity is γ
times larger). A pure honest re-simulation from the shards (training.fl.loo on the job's config) would
instead replace every misbehaving phone by an honest one and so measure a different job: its
"leave-one-out" of a label flipper is that of an honest phone. The record-anchored replay measures the
job that actually ran. As a by-product, |Δ_k(recorded) − train_k(w)| / |Δ_k| shows which phones did
not compute what their shard implies (`replay_mismatch`; about 1e-6 for honest phones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from training.analysis.context import JobAnalysisContext, RecordedRound, RecordedUpdate, recorded_round
from training.fl.client import HONEST, ClientTask, client_train
from training.fl.evaluate import evaluate_weights
from training.fl.registry import JobContext, make_strategy
from training.fl.strategy import ClientUpdate, ServerState, Strategy, Weights
from training.fl.wire import load_tensors
from training.jobs import storage
from training.jobs.config import strategy_params
from training.models import Job

SHARD_MAX_BYTES = 1 << 31
Progress = Callable[[int, int, str], None]  # (done, total, what) — replays done of total

DEFINITION = (
    "Exact leave-one-out of the recorded job: for each phone c, the job is replayed from the checkpoint "
    "before c's first update with c removed from every round (same rounds, phones, seeds and step counts, "
    "the job's own aggregator). Every other phone's update at the changed model is its recorded upload plus "
    "the change that honest local training on the shard the server gave it shows between the changed and "
    "the recorded starting model — exact retraining for phones that trained honestly. Phone behaviours "
    "are unknown to the server: a misbehaving phone keeps its recorded update, and only its sensitivity to "
    "the starting model is modelled as honest. Influence on the job's test set at the replayed round; "
    "positive loss influence = the loss would rise without the phone (it helps)."
)


@dataclass
class ExactClient:
    loss: float
    accuracy: float
    params_norm: float
    seconds: float


@dataclass
class ReplayResult:
    round: int
    baseline: dict[str, float]
    clients: dict[str, ExactClient]
    replay_mismatch: dict[str, float]  # client -> max relative |recorded − honest replay| over its rounds
    base_reproduction_error: float  # max |w_t(re-aggregated) − w_t(checkpoint)|: the record is consistent
    trainings: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def _distance(a: Weights, b: Weights) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


class RecordAnchoredReplay:
    """Replays one job's committed rounds 1..`upto` without each phone in turn (see the module docstring)."""

    def __init__(self, job: Job, context: JobAnalysisContext, upto: int) -> None:
        self.job = job
        self.context = context
        self.rounds: list[RecordedRound] = [
            recorded_round(job, context.config, t) for t in range(1, upto + 1)
        ]
        participants = list(job.participants.all())
        self.client_index = {p.client_id: p.client_index for p in participants}
        total = sum(p.num_samples for p in participants)
        self.strategy: Strategy = make_strategy(
            context.config.algorithm,
            strategy_params(context.config),
            JobContext(
                num_clients=len(participants),
                lr=context.config.lr,
                total_samples=total,
                clients_per_round=context.config.clients_per_round,
            ),
        )
        self.names = list(storage.load_checkpoint(job.pk, 0).weights)
        self._checkpoints: dict[int, ServerState] = {}
        self._recorded: dict[tuple[int, str], Weights] = {}
        self._honest_base: dict[tuple[int, str], Weights | None] = {}
        self._shards: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.trainings = 0

    # --- recorded inputs --------------------------------------------------------------------------------
    def checkpoint(self, round_no: int) -> ServerState:
        if round_no not in self._checkpoints:
            self._checkpoints[round_no] = storage.load_checkpoint(self.job.pk, round_no)
        return self._checkpoints[round_no]

    def recorded_delta(self, round_no: int, update: RecordedUpdate) -> Weights:
        key = (round_no, update.client_id)
        if key not in self._recorded:
            self._recorded[key] = update.delta(self.names)
        return self._recorded[key]

    def shard(self, client_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if client_id not in self._shards:
            path = storage.shard_path(self.job.pk, self.client_index[client_id])
            tensors = load_tensors(path, max_bytes=SHARD_MAX_BYTES)
            self._shards[client_id] = (tensors["x"], tensors["y"])
        return self._shards[client_id]

    def participants(self) -> list[str]:
        seen: dict[str, None] = {}
        for rnd in self.rounds:
            for cid in rnd.client_ids:
                seen.setdefault(cid, None)
        return sorted(seen, key=int)

    # --- honest local training ---------------------------------------------------------------------------
    def honest_delta(self, update: RecordedUpdate, start: Weights) -> Weights | None:
        """What honest training on k's shard from `start` uploads, with k's recorded seed and step count;
        None when the phone reported no steps (its update does not depend on the starting model)."""
        if update.steps < 1:
            return None
        config = update.sent_config()
        config.pop("deadline_s", None)  # wall-clock stops are not replayable; the step count is
        config["max_steps"] = update.steps
        x, y = self.shard(update.client_id)
        task = ClientTask(config=config, received=dict(start), x=x, y=y, state_dir=None, behaviour=HONEST)
        self.trainings += 1
        upload = client_train(task).upload()
        return {n: upload[n] for n in self.names}

    def honest_base(self, round_no: int, update: RecordedUpdate) -> Weights | None:
        key = (round_no, update.client_id)
        if key not in self._honest_base:
            self._honest_base[key] = self.honest_delta(update, self.checkpoint(round_no - 1).weights)
        return self._honest_base[key]

    def counterfactual_delta(self, round_no: int, update: RecordedUpdate, start: Weights) -> Weights:
        recorded = self.recorded_delta(round_no, update)
        base = self.honest_base(round_no, update)
        if base is None:
            return recorded
        moved = self.honest_delta(update, start)
        assert moved is not None
        return {
            n: (recorded[n].double() + moved[n].double() - base[n].double()).to(recorded[n].dtype)
            for n in self.names
        }

    # --- replays ----------------------------------------------------------------------------------------
    def without(self, client_id: str) -> Weights:
        """w_T with `client_id` removed from every round."""
        first = next(r.number for r in self.rounds if client_id in r.client_ids)
        state = self.checkpoint(first - 1)
        for rnd in self.rounds[first - 1 :]:
            others = [u for u in rnd.updates if u.client_id != client_id]
            if not others:
                continue  # c was the round's only phone: without it the round changes nothing
            updates = []
            for u in others:
                delta = (
                    self.recorded_delta(rnd.number, u)
                    if rnd.number == first  # everyone else started from the recorded model
                    else self.counterfactual_delta(rnd.number, u, state.weights)
                )
                updates.append(ClientUpdate(u.client_id, u.num_samples, delta, {}))
            state, _ = self.strategy.aggregate(state, rnd.number, updates, [])
        return state.weights

    def base_reproduction_error(self) -> float:
        """Re-aggregating the recorded uploads must give the recorded checkpoints (else the record is
        inconsistent and no replay of it is meaningful)."""
        worst = 0.0
        for rnd in self.rounds:
            updates = [
                ClientUpdate(u.client_id, u.num_samples, self.recorded_delta(rnd.number, u), {})
                for u in rnd.updates
            ]
            state, _ = self.strategy.aggregate(self.checkpoint(rnd.number - 1), rnd.number, updates, [])
            recorded = self.checkpoint(rnd.number).weights
            worst = max(worst, max(float((state.weights[n] - recorded[n]).abs().max()) for n in self.names))
        return worst

    def replay_mismatch(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for rnd in self.rounds:
            for u in rnd.updates:
                base = self.honest_base(rnd.number, u)
                if base is None:
                    continue
                recorded = self.recorded_delta(rnd.number, u)
                norm = math.sqrt(sum(float(recorded[n].double().pow(2).sum()) for n in self.names))
                gap = _distance(recorded, base) / max(norm, 1e-12)
                out[u.client_id] = max(out.get(u.client_id, 0.0), gap)
        return out

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        x, y = self.context.test
        result = evaluate_weights(self.context.model_spec, weights, x, y)
        return result.loss, result.accuracy

    def run(self, progress: Progress | None = None) -> ReplayResult:
        started = time.perf_counter()
        upto = self.rounds[-1].number if self.rounds else 0
        final = self.checkpoint(upto).weights
        base_loss, base_accuracy = self.evaluate(final)
        targets = self.participants()
        clients: dict[str, ExactClient] = {}
        for index, cid in enumerate(targets):
            if progress is not None:
                progress(index, len(targets), f"replaying without device {cid}")
            replay_started = time.perf_counter()
            weights = self.without(cid)
            loss, accuracy = self.evaluate(weights)
            clients[cid] = ExactClient(
                loss=loss - base_loss,
                accuracy=accuracy - base_accuracy,
                params_norm=_distance(weights, final),
                seconds=time.perf_counter() - replay_started,
            )
        mismatch = self.replay_mismatch()
        reproduction = self.base_reproduction_error()
        if progress is not None:
            progress(len(targets), len(targets), "done")
        return ReplayResult(
            round=upto,
            baseline={"loss": base_loss, "accuracy": base_accuracy},
            clients=clients,
            replay_mismatch=mismatch,
            base_reproduction_error=reproduction,
            trainings=self.trainings,
            seconds=time.perf_counter() - started,
        )
