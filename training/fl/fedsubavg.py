"""FedSubAvg — federated submodel averaging (Niu, Wu et al., MobiCom 2020), ALGORITHMS.md §6.

Each phone receives only its *submodel*: the embedding rows it requested plus every dense layer, so
instructions differ per phone. It uploads the deltas of its requested rows with per-row sample counts
(wire format in submodel.py). Aggregation, per embedding row r:

    Δ_r = Σ_i w_{i,r} Δ_{i,r} / Σ_i w_{i,r},   w_{i,r} = 1 if count_{i,r} > 0   (row_weight="touched")
                                                w_{i,r} = count_{i,r}            (row_weight="count")

and rows nobody touched stay as they are. Dense layers use FedAvg's sample-weighted mean. Plain FedAvg
instead divides every row by the total over all clients, shrinking the update of a row only a few phones
touched — the difference this strategy exists for. (The baseline, `FullModelFedAvg`, is ordinary FedAvg
on the full model; with the same initial weights, data and local optimiser — Adam or SGD without weight
decay moves only rows that got a gradient — the two differ only in how rows are averaged.)

Round protocol (the engine's part; `requires_index_request` flags it):
  1. select as usual;
  2. request step: push `request_round_inputs(...)` (the union U as `<table>.union` tensors and a config
     with the privacy preset) to each chosen phone, run `fedsubavg_client_request` there (randomized
     response over U, permanent stage memoised in the phone's state dir), pull its `<table>.idx`, check it
     with `parse_request` and record it with `set_request`;
  3. configure (each phone's own rows + dense layers), train (`CLIENT_ALGORITHMS["fedsubavg"]`), check
     each upload with `validate_update` (not `wire.validate_update`: the sparse tensors' shapes vary per
     phone), aggregate.
U comes from `set_union`; in the lab it is the union of the phones' real index sets, which the server
therefore sees today (a private set union by secure aggregation is a later step).

The baseline `FullModelFedAvg` sends everyone the whole model; its phones run the same client code,
which trains the full model when the download has no `T.idx`.

State keys (buffers are checkpointed as safetensors; keys are built, never parsed)
- buffers `fedsubavg.request.<client_id>.<table>`: int64 ids the client was (or will be) sent this round.
- buffers `fedsubavg.union.<table>`: int64 U per table.
- meta `fedsubavg.requests`: {client_id: round the request was set for}.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.fl.client import ClientTask, LocalTrainingResult, Progress
from training.fl.ctr_model import EMBEDDING_TABLES, CTRSamples, StepCallback
from training.fl.fedavg import FedAvg
from training.fl.index_privacy import IndexPrivacyClient, PrivacyPreset, preset
from training.fl.strategy import (
    ClientFailure,
    ClientInstructions,
    ClientUpdate,
    ServerState,
    Strategy,
    Weights,
    round_counts,
)
from training.fl.submodel import (
    COUNT,
    IDX,
    ROWS,
    IndexSets,
    as_index_set,
    dense_names,
    download_tensors,
    extract_submodel,
    full_model_client_train,
    index_sets_of,
    submodel_client_train,
    upload_size_bytes,
    validate_sparse_update,
    weight_key,
)

REQUEST_PREFIX = "fedsubavg.request."
UNION_PREFIX = "fedsubavg.union."
REQUESTS_META = "fedsubavg.requests"
ROW_WEIGHTS = ("touched", "count")
UNION = ".union"  # on the wire to a phone: `<table>.union`, int64 U
CLIENT_ALGORITHM = "fedsubavg"  # the CLIENT_ALGORITHMS key of the client side below


def request_key(client_id: str, table: str) -> str:
    return f"{REQUEST_PREFIX}{client_id}.{table}"


def union_key(table: str) -> str:
    return f"{UNION_PREFIX}{table}"


def row_weights(count: torch.Tensor, mode: str) -> torch.Tensor:
    """w_{i,r} for one client's uploaded rows."""
    return count.to(torch.float32) if mode == "count" else (count > 0).to(torch.float32)


def aggregate_rows(
    num_rows: int, dim: int, uploads: Sequence[Mapping[str, torch.Tensor]], table: str, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ [num_rows, dim], total weight per row [num_rows]) of FedSubAvg for one table; Δ is zero on rows
    with zero total weight. Sums run in float64 so thousands of clients do not lose precision."""
    numerator = torch.zeros(num_rows, dim, dtype=torch.float64)
    denominator = torch.zeros(num_rows, dtype=torch.float64)
    for upload in uploads:
        ids, rows = upload[table + IDX], upload[table + ROWS].to(torch.float64)
        w = row_weights(upload[table + COUNT], mode).to(torch.float64)
        numerator.index_add_(0, ids, rows * w.unsqueeze(1))
        denominator.index_add_(0, ids, w)
    delta = numerator / denominator.clamp_min(1e-300).unsqueeze(1)
    delta[denominator == 0] = 0.0
    return delta, denominator


def weighted_dense_mean(updates: Sequence[ClientUpdate], names: Sequence[str]) -> Weights:
    """FedAvg's Σ n_i Δ_i / Σ n_i for the dense layers (clients with no samples weigh nothing)."""
    total = sum(max(u.num_samples, 0) for u in updates)
    out: Weights = {}
    for name in names:
        acc = torch.zeros_like(updates[0].tensors[name], dtype=torch.float64)
        if total > 0:
            for u in updates:
                acc += (max(u.num_samples, 0) / total) * u.tensors[name].to(torch.float64)
        out[name] = acc.to(torch.float32)
    return out


class FedSubAvg(Strategy):
    """Per-row FedSubAvg over the embedding `tables` (parameter prefixes), FedAvg on dense layers."""

    name = "fedsubavg"
    client_algorithm = CLIENT_ALGORITHM
    requires_index_request = True  # the engine must call set_request for each chosen client first

    def __init__(
        self,
        tables: Sequence[str] = ("emb.item", "emb.cat"),
        row_weight: str = "touched",
        server_lr: float = 1.0,
        privacy: PrivacyPreset | str = "default",
    ) -> None:
        if row_weight not in ROW_WEIGHTS:
            raise ValueError(f"row_weight must be one of {ROW_WEIGHTS}, got {row_weight!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        if not tables:
            raise ValueError("FedSubAvg needs at least one embedding table")
        self.tables = list(tables)
        self.row_weight = row_weight
        self.server_lr = float(server_lr)
        self.privacy = preset(privacy) if isinstance(privacy, str) else privacy

    def initial_state(self, weights: Weights) -> ServerState:
        missing = [
            t for t in self.tables if weight_key(t) not in weights or weights[weight_key(t)].dim() != 2
        ]
        if missing:
            raise ValueError(f"model has no 2-D embedding table for {', '.join(missing)}")
        state = super().initial_state(weights)
        state.meta[REQUESTS_META] = {}
        return state

    # -- requests and the union ---------------------------------------------------------------------
    def set_union(self, state: ServerState, union: Mapping[str, torch.Tensor]) -> None:
        """Record U per table (learned from the phones; a private set union is a later step)."""
        for table in self.tables:
            ids = as_index_set(union[table])
            self._check_ids(state, table, ids)
            state.buffers[union_key(table)] = ids

    def union(self, state: ServerState) -> IndexSets:
        return {t: state.buffers[union_key(t)] for t in self.tables if union_key(t) in state.buffers}

    def request_round_inputs(
        self, state: ServerState, base_config: Mapping[str, Any]
    ) -> tuple[Weights, dict[str, Any]]:
        """What a phone needs to compute its request: `<table>.union` tensors and a config with the
        privacy preset (run by `fedsubavg_client_request` on the phone)."""
        union = self.union(state)
        missing = [t for t in self.tables if t not in union]
        if missing:
            raise ValueError(f"no union recorded for {', '.join(missing)}; call set_union first")
        tensors = {t + UNION: ids for t, ids in union.items()}
        return tensors, {**base_config, **self._client_config_extras()}

    def parse_request(self, state: ServerState, tensors: Mapping[str, torch.Tensor]) -> IndexSets:
        """A phone's request upload (`<table>.idx`, int64, sorted unique, within the union), checked;
        raises ValueError with every reason."""
        problems: list[str] = []
        out: IndexSets = {}
        unexpected = sorted(set(tensors) - {t + IDX for t in self.tables})
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}")
        for table in self.tables:
            ids = tensors.get(table + IDX)
            if ids is None:
                problems.append(f"missing {table}{IDX}")
                continue
            if ids.dtype != torch.int64 or ids.dim() != 1:
                problems.append(f"{table}{IDX} must be 1-D int64, got {ids.dtype} {tuple(ids.shape)}")
                continue
            if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
                problems.append(f"{table}{IDX} must be sorted and free of duplicates")
                continue
            union = state.buffers.get(union_key(table))
            if union is not None and ids.numel() and not bool(torch.isin(ids, union).all()):
                problems.append(f"{table}{IDX} has ids outside the union")
                continue
            num_rows = state.weights[weight_key(table)].shape[0]
            if ids.numel() and (int(ids[0]) < 0 or int(ids[-1]) >= num_rows):
                problems.append(f"{table}{IDX} has ids outside [0, {num_rows})")
                continue
            out[table] = ids
        if problems:
            raise ValueError("; ".join(problems))
        return out

    def _client_config_extras(self) -> dict[str, Any]:
        return {
            "algorithm": self.client_algorithm,
            "tables": list(self.tables),
            "index_privacy": self.privacy.to_json(),
        }

    def set_request(
        self, state: ServerState, round_no: int, client_id: str, request: Mapping[str, torch.Tensor]
    ) -> None:
        """Record which rows `client_id` asked for this round; `configure` sends exactly these."""
        for table in self.tables:
            if table not in request:
                raise ValueError(f"request from {client_id} lacks table {table}")
            ids = as_index_set(request[table])
            self._check_ids(state, table, ids)
            union = state.buffers.get(union_key(table))
            if union is not None and ids.numel() and not bool(torch.isin(ids, union).all()):
                raise ValueError(f"request from {client_id} for {table} has ids outside the union")
            state.buffers[request_key(client_id, table)] = ids
        state.meta.setdefault(REQUESTS_META, {})[client_id] = round_no

    def request(self, state: ServerState, client_id: str) -> IndexSets:
        if client_id not in state.meta.get(REQUESTS_META, {}):
            raise KeyError(f"no submodel request recorded for client {client_id}")
        return {t: state.buffers[request_key(client_id, t)] for t in self.tables}

    def _check_ids(self, state: ServerState, table: str, ids: torch.Tensor) -> None:
        num_rows = state.weights[weight_key(table)].shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_rows):
            raise ValueError(f"{table}: ids must lie in [0, {num_rows})")

    def _forget_requests(self, state: ServerState, client_ids: Sequence[str]) -> None:
        requests = state.meta.setdefault(REQUESTS_META, {})
        for cid in client_ids:
            if requests.pop(cid, None) is not None:
                for table in self.tables:
                    state.buffers.pop(request_key(cid, table), None)

    # -- the Strategy interface -----------------------------------------------------------------------
    def configure(
        self, state: ServerState, round_no: int, client_ids: Sequence[str], base_config: Mapping[str, Any]
    ) -> list[ClientInstructions]:
        missing = [cid for cid in client_ids if cid not in state.meta.get(REQUESTS_META, {})]
        if missing:
            raise ValueError(f"no submodel request from {', '.join(sorted(missing))}; call set_request first")
        config = {**base_config, **self._client_config_extras()}
        plan = []
        for cid in client_ids:
            sub, indices = extract_submodel(state.weights, self.request(state, cid))
            plan.append(
                ClientInstructions(client_id=cid, tensors=download_tensors(sub, indices), config=dict(config))
            )
        return plan

    def validate_update(
        self,
        state: ServerState,
        client_id: str,
        tensors: Mapping[str, torch.Tensor],
        num_samples: int | None = None,
    ) -> list[str]:
        """Reasons to reject `client_id`'s upload (its ids must be a subset of its request)."""
        try:
            requested = self.request(state, client_id)
        except KeyError as exc:
            return [str(exc)]
        shapes = {k: tuple(v.shape) for k, v in state.weights.items()}
        return validate_sparse_update(
            tensors, shapes, self.tables, requested, None if num_samples is None else float(num_samples)
        )

    def validate_upload(
        self,
        state: ServerState,
        client_id: str,
        tensors: Mapping[str, torch.Tensor],
        num_samples: int | None = None,
    ) -> list[str]:
        """The engine's per-upload check: `validate_update`, so the ids must be a subset of this client's
        own request (the engine restores the requests recorded in the round dir into `state` first)."""
        return self.validate_update(state, client_id, tensors, num_samples)

    def expected_upload(self, weights: Weights) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Only the dense deltas have fixed shapes; the per-table `T.idx/T.rows/T.count` vary per phone and
        are checked by `validate_update`."""
        return {k: (tuple(weights[k].shape), weights[k].dtype) for k in dense_names(weights, self.tables)}

    def aggregate(
        self,
        state: ServerState,
        round_no: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[ClientFailure],
    ) -> tuple[ServerState, dict[str, float]]:
        metrics = round_counts(round_no, updates, failures)
        weights = dict(state.weights)
        if updates:
            uploads = [u.tensors for u in updates]
            for table in self.tables:
                full = state.weights[weight_key(table)]
                delta, total = aggregate_rows(full.shape[0], full.shape[1], uploads, table, self.row_weight)
                weights[weight_key(table)] = (full.to(torch.float64) + self.server_lr * delta).to(full.dtype)
                updated = total > 0
                metrics[f"{table}.rows_updated"] = float(updated.sum())
                metrics[f"{table}.rows_requested"] = float(sum(u[table + IDX].numel() for u in uploads))
                if self.row_weight == "touched" and bool(updated.any()):
                    metrics[f"{table}.clients_per_row"] = float(total[updated].mean())
            dense = weighted_dense_mean(updates, dense_names(state.weights, self.tables))
            for name, d in dense.items():
                weights[name] = state.weights[name] + self.server_lr * d
            metrics["bytes_up_mean"] = sum(upload_size_bytes(u) for u in uploads) / len(uploads)
        new_state = ServerState(weights=weights, buffers=dict(state.buffers), meta=dict(state.meta))
        new_state.meta[REQUESTS_META] = dict(state.meta.get(REQUESTS_META, {}))
        self._forget_requests(new_state, [u.client_id for u in updates] + [f.client_id for f in failures])
        return new_state, metrics


class FullModelFedAvg(FedAvg):
    """The baseline: plain FedAvg on the whole CTR model. Phones get the full model and run the very same
    local training as FedSubAvg's phones (the `fedsubavg` client side trains the full model when the
    download has no `T.idx`), so the two differ only in what travels and how rows are averaged."""

    name = "fedavg_full"
    client_algorithm = CLIENT_ALGORITHM


# ---------------------------------------------------------------------------------------------------------
# Phone side (CLIENT_ALGORITHMS["fedsubavg"] and the agent's request step)
# ---------------------------------------------------------------------------------------------------------


def _progress_adapter(task: ClientTask) -> StepCallback | None:
    """Relay the CTR trainer's steps as the agent's Progress events."""
    progress = task.progress
    if progress is None:
        return None
    started = time.perf_counter()
    last = [started]

    def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
        now = time.perf_counter()
        progress(Progress(epoch, step, steps, loss, now - last[0], now - started))
        last[0] = now

    return on_step


def _stop_reason(metrics: Mapping[str, float]) -> str:
    if metrics["completed"] >= 1.0:
        return "completed"
    return "max_steps" if metrics["steps"] >= metrics["planned_steps"] else "deadline"


def fedsubavg_client_train(task: ClientTask) -> LocalTrainingResult:
    """Client side of FedSubAvg (download with `T.idx`: train the submodel, upload sparse rows) and of
    its full-model FedAvg baseline (no `T.idx`: train everything, upload the dense delta). The shard is
    CTR samples packed by `CTRSamples.to_xy`."""
    samples = CTRSamples.from_xy(task.x, task.y)
    seed = int(task.config.get("seed", 0))
    on_step = _progress_adapter(task)
    if all(t + IDX in task.received for t in EMBEDDING_TABLES):
        upload, metrics = submodel_client_train(task.received, task.config, samples, seed, on_step)
    else:
        upload, metrics = full_model_client_train(task.received, task.config, samples, seed, on_step)
    steps, planned = int(metrics["steps"]), int(metrics["planned_steps"])
    batch = int(task.config.get("batch_size", 32))
    per_epoch = max(-(-int(metrics["num_samples"]) // batch), 1)
    return LocalTrainingResult(
        delta=upload,
        num_samples=int(metrics["num_samples"]),
        steps=steps,
        planned_steps=planned,
        epochs_done=steps / per_epoch,
        loss_before=metrics["loss_before"],
        loss_after=metrics["loss_after"],
        train_time_s=metrics["train_time_s"],
        stop_reason=_stop_reason(metrics),
    )


def fedsubavg_client_request(
    config: Mapping[str, Any],
    received: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    state_dir: Path | None,
    seed: int | None = None,
) -> Weights:
    """The phone's request for this round: its real ids randomized over the union (`<table>.union` in
    `received`) with the job's privacy preset; the permanent stage is memoised in `state_dir`. Returns
    `<table>.idx` tensors to upload. `seed` is for tests only: real phones draw unpredictable randomness."""
    tables = config.get("tables", list(EMBEDDING_TABLES))
    raw_preset = config.get("index_privacy", {"name": "default"})
    if not isinstance(raw_preset, Mapping) or not isinstance(tables, list):
        raise ValueError("config needs an index_privacy object and a tables list")
    privacy = PrivacyPreset.from_json(raw_preset)
    real = index_sets_of(CTRSamples.from_xy(x, y))
    union = {}
    for table in tables:
        ids = received.get(table + UNION)
        if ids is None and not privacy.adds_decoys:
            # Without decoys a request only keeps or drops the phone's own ids, so the platform does not
            # send U; drawing over the own ids gives the same request distribution.
            ids = real[table]
        if ids is None or ids.dtype != torch.int64 or ids.dim() != 1:
            raise ValueError(f"request step needs {table}{UNION} as a 1-D int64 tensor")
        union[table] = ids
    client = IndexPrivacyClient(privacy, state_dir=state_dir, seed=seed)
    request = client.request({t: real[t] for t in tables}, union)
    return {t + IDX: ids for t, ids in request.items()}
