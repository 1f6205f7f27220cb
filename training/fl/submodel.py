"""Submodel mechanics: a phone downloads, trains and uploads only the embedding rows it needs.

A model's *sparse* part is its embedding tables, named by parameter prefix (`emb.item` owns
`emb.item.weight`, [N, d]); everything else is *dense* and always travels whole. A client's *index set*
for a table is the sorted, unique int64 ids it asks for (its real ids, plus decoys under index privacy).

On the wire (safetensors; `T` is a table prefix such as `emb.item`):

download (server -> phone)                 upload (phone -> server)
  T.weight  float32 [k, d]  the rows          T.idx    int64   [k]     global row ids (= the request)
  T.idx     int64   [k]     their global ids  T.rows   float32 [k, d]  row deltas (new - old)
  <dense>   float32 full    dense weights     T.count  float32 [k]     samples that used each row
                                              <dense>  float32 full    dense deltas

The download's `T.weight` + dense entries form a state dict of the same architecture sized k rows, so
the phone trains an ordinary (small) model on samples whose ids were remapped to local row numbers.
The upload lists every requested row in request order; rows the phone did not train on (decoys, or real
rows none of its usable samples touched) carry an exactly zero delta and a zero count, so FedSubAvg gives
them zero weight — and, once uploads are combined by secure aggregation, the server cannot tell them
from real rows. Today the server sees each phone's counts, and with them which rows were real.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from training.fl.ctr_model import (
    EMBEDDING_TABLES,
    PAD_ID,
    CTRModel,
    CTRModelConfig,
    CTRSamples,
    LocalTrainingConfig,
    StepCallback,
    evaluate_ctr,
    train_ctr,
)
from training.fl.strategy import Weights

IndexSets = dict[str, torch.Tensor]  # table prefix -> sorted unique int64 ids

IDX, ROWS, COUNT = ".idx", ".rows", ".count"


def weight_key(table: str) -> str:
    return table + ".weight"


def dense_names(weights: Mapping[str, object], tables: Sequence[str]) -> list[str]:
    """Parameter names that are not embedding tables (they travel whole)."""
    sparse = {weight_key(t) for t in tables}
    return [name for name in weights if name not in sparse]


def as_index_set(ids: torch.Tensor) -> torch.Tensor:
    """Sorted unique int64 ids, dropping padding."""
    ids = ids.reshape(-1).to(torch.int64)
    return torch.unique(ids[ids != PAD_ID], sorted=True)


def index_sets_of(
    samples: CTRSamples, table_fields: Mapping[str, Sequence[str]] = EMBEDDING_TABLES
) -> IndexSets:
    """A client's real index set per table: every id its local data uses (history and candidates)."""
    return {
        table: as_index_set(torch.cat([getattr(samples, f).reshape(-1) for f in names]))
        for table, names in table_fields.items()
    }


def union_of(index_sets: Sequence[IndexSets]) -> IndexSets:
    """The union U of several clients' index sets, per table. In the simulation the server computes it
    directly; on real phones it must come from a private set union (secure aggregation), a later step."""
    tables = sorted({t for s in index_sets for t in s})
    return {t: as_index_set(torch.cat([s[t] for s in index_sets if t in s])) for t in tables}


def _check_index_set(table: str, ids: torch.Tensor, num_rows: int) -> None:
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise ValueError(f"{table}: index set must be a 1-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_rows):
        raise ValueError(f"{table}: index set has ids outside [0, {num_rows})")
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError(f"{table}: index set must be sorted and free of duplicates")


def extract_submodel(
    full_weights: Mapping[str, torch.Tensor], index_sets: Mapping[str, torch.Tensor]
) -> tuple[Weights, IndexSets]:
    """The rows `index_sets` selects from every table, plus all dense layers (copies, not views)."""
    sub: Weights = {}
    indices: IndexSets = {}
    tables = list(index_sets)
    for table in tables:
        full = full_weights[weight_key(table)]
        ids = index_sets[table]
        _check_index_set(table, ids, full.shape[0])
        sub[weight_key(table)] = full.index_select(0, ids).clone()
        indices[table] = ids.clone()
    for name in dense_names(full_weights, tables):
        sub[name] = full_weights[name].detach().clone()
    return sub, indices


def merge_submodel(
    full_weights: Mapping[str, torch.Tensor], sub_weights: Mapping[str, torch.Tensor], index_sets: IndexSets
) -> Weights:
    """A new full model: `full_weights` with the submodel's rows and dense layers written back."""
    merged: Weights = {name: t.detach().clone() for name, t in full_weights.items()}
    for table, ids in index_sets.items():
        merged[weight_key(table)][ids] = sub_weights[weight_key(table)]
    for name in dense_names(full_weights, list(index_sets)):
        merged[name] = sub_weights[name].detach().clone()
    return merged


def download_tensors(sub_weights: Weights, index_sets: IndexSets) -> Weights:
    """What the server pushes to a phone: the submodel plus each table's `T.idx`."""
    out = dict(sub_weights)
    for table, ids in index_sets.items():
        out[table + IDX] = ids
    return out


def split_download(tensors: Mapping[str, torch.Tensor], tables: Sequence[str]) -> tuple[Weights, IndexSets]:
    """Phone side: separate a download into the submodel's state dict and its index sets, checking that
    every table's rows and ids agree."""
    sub: Weights = {}
    indices: IndexSets = {}
    for table in tables:
        ids, rows = tensors.get(table + IDX), tensors.get(weight_key(table))
        if ids is None or rows is None:
            raise ValueError(f"download lacks {table}{IDX} or {weight_key(table)}")
        if ids.dtype != torch.int64 or ids.dim() != 1 or rows.dim() != 2 or rows.shape[0] != ids.shape[0]:
            raise ValueError(f"{table}: {tuple(ids.shape)} ids do not match rows {tuple(rows.shape)}")
        indices[table] = ids
    for name, tensor in tensors.items():
        if not name.endswith(IDX) or name[: -len(IDX)] not in tables:
            sub[name] = tensor
    return sub, indices


def _to_local(ids: torch.Tensor, index_set: torch.Tensor) -> torch.Tensor:
    """Local row number of each global id, or PAD_ID where the id is padding or not in the index set."""
    if index_set.numel() == 0:
        return torch.full_like(ids, PAD_ID)
    pos = torch.searchsorted(index_set, ids.clamp_min(0)).clamp_max(index_set.numel() - 1)
    found = (index_set[pos] == ids) & (ids != PAD_ID)
    return torch.where(found, pos, torch.full_like(pos, PAD_ID))


def localize_samples(samples: CTRSamples, index_sets: IndexSets) -> tuple[CTRSamples, int]:
    """Remap global ids to the submodel's local rows; returns the usable samples and how many were dropped.

    A client trains only on rows it actually downloaded (S ∩ S″ under index privacy): a sample whose
    candidate item or category was not downloaded is dropped, and a history position whose item or
    category was not downloaded becomes padding."""
    item_set, cat_set = index_sets["emb.item"], index_sets["emb.cat"]
    history = _to_local(samples.history, item_set)
    history_category = _to_local(samples.history_category, cat_set)
    hidden = (history == PAD_ID) | (history_category == PAD_ID)
    history = history.masked_fill(hidden, PAD_ID)
    history_category = history_category.masked_fill(hidden, PAD_ID)
    candidate = _to_local(samples.candidate, item_set)
    category = _to_local(samples.category, cat_set)
    keep = (candidate != PAD_ID) & (category != PAD_ID)
    local = CTRSamples(history, history_category, candidate, category, samples.label)
    return local.subset(keep.nonzero().reshape(-1)), int((~keep).sum())


def row_counts(
    samples: CTRSamples,
    table_sizes: Mapping[str, int],
    table_fields: Mapping[str, Sequence[str]] = EMBEDDING_TABLES,
) -> dict[str, torch.Tensor]:
    """Per table, how many samples use each row at least once (float32 [k]); padding is not counted."""
    counts: dict[str, torch.Tensor] = {}
    for table, size in table_sizes.items():
        per_sample = torch.cat(
            [getattr(samples, f).reshape(len(samples), -1) for f in table_fields[table]], dim=1
        )
        ordered, _ = torch.sort(per_sample, dim=1)
        # Count a row once per sample: keep the first of each run of equal ids within a sample.
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        ids = ordered[first & (ordered != PAD_ID)]
        counts[table] = torch.bincount(ids, minlength=size).to(torch.float32)[:size]
    return counts


def sparse_update(
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    index_sets: IndexSets,
    counts: Mapping[str, torch.Tensor],
    *,
    only_touched: bool = False,
) -> Weights:
    """The upload: per table `T.idx`/`T.rows`/`T.count` and dense deltas under their own names.

    By default every requested row is listed (so the set of uploaded ids equals the request and reveals
    nothing new); rows with count 0 get an exactly zero delta. `only_touched=True` lists only rows with
    count > 0 (smaller, but tells the server which requested rows were real)."""
    upload: Weights = {}
    tables = list(index_sets)
    for table in tables:
        key = weight_key(table)
        count = counts[table].to(torch.float32)
        delta = (after[key] - before[key]).to(torch.float32)
        touched = count > 0
        delta = torch.where(touched.unsqueeze(1), delta, torch.zeros_like(delta))
        ids = index_sets[table]
        if only_touched:
            ids, delta, count = ids[touched], delta[touched], count[touched]
        upload[table + IDX] = ids.clone()
        upload[table + ROWS] = delta.contiguous()
        upload[table + COUNT] = count.clone()
    for name in dense_names(before, tables):
        upload[name] = (after[name] - before[name]).to(torch.float32)
    return upload


def densify_update(
    update: Mapping[str, torch.Tensor], full_shapes: Mapping[str, Sequence[int]], tables: Sequence[str]
) -> tuple[Weights, dict[str, torch.Tensor]]:
    """A sparse upload as a full-size delta (zeros off the listed rows) plus full-size per-row counts."""
    delta: Weights = {}
    counts: dict[str, torch.Tensor] = {}
    for table in tables:
        shape = tuple(full_shapes[weight_key(table)])
        full = torch.zeros(shape, dtype=torch.float32)
        full[update[table + IDX]] = update[table + ROWS]
        delta[weight_key(table)] = full
        count = torch.zeros(shape[0], dtype=torch.float32)
        count[update[table + IDX]] = update[table + COUNT]
        counts[table] = count
    sparse_keys = {t + s for t in tables for s in (IDX, ROWS, COUNT)}
    for name, tensor in update.items():
        if name not in sparse_keys:
            delta[name] = tensor.clone()
    return delta, counts


def apply_sparse_update(
    full_weights: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor], tables: Sequence[str]
) -> Weights:
    """`full_weights` plus one client's sparse delta (rows added in place of their ids, dense added)."""
    out: Weights = {name: t.detach().clone() for name, t in full_weights.items()}
    for table in tables:
        out[weight_key(table)].index_add_(0, update[table + IDX], update[table + ROWS])
    for name in dense_names(full_weights, tables):
        out[name] += update[name]
    return out


def upload_size_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Payload bytes of a tensor dict (what safetensors stores, minus its small JSON header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _validate_table(
    table: str,
    update: Mapping[str, torch.Tensor],
    num_rows: int,
    dim: int,
    requested: torch.Tensor | None,
    max_count: float | None,
) -> list[str]:
    names = (table + IDX, table + ROWS, table + COUNT)
    missing = [n for n in names if n not in update]
    if missing:
        return [f"{table}: missing {', '.join(missing)}"]
    ids, rows, count = (update[n] for n in names)
    problems: list[str] = []
    if ids.dtype != torch.int64 or ids.dim() != 1:
        problems.append(f"{table}{IDX} must be 1-D int64, got {ids.dtype} {tuple(ids.shape)}")
    if rows.dtype != torch.float32 or rows.dim() != 2 or rows.shape[1:] != (dim,):
        problems.append(f"{table}{ROWS} must be float32 [k, {dim}], got {rows.dtype} {tuple(rows.shape)}")
    if count.dtype != torch.float32 or count.dim() != 1:
        problems.append(f"{table}{COUNT} must be 1-D float32, got {count.dtype} {tuple(count.shape)}")
    if problems:
        return problems
    k = ids.shape[0]
    if rows.shape[0] != k or count.shape[0] != k:
        return [f"{table}: mismatched lengths: {k} ids, {rows.shape[0]} rows, {count.shape[0]} counts"]
    if k and (int(ids.min()) < 0 or int(ids.max()) >= num_rows):
        bad = ids[(ids < 0) | (ids >= num_rows)]
        problems.append(f"{table}: {bad.numel()} ids out of range [0, {num_rows}), e.g. {int(bad[0])}")
    if torch.unique(ids).numel() != k:
        problems.append(f"{table}: {k - torch.unique(ids).numel()} duplicate ids")
    if requested is not None and k:
        outside = ids[~torch.isin(ids, requested)]
        if outside.numel():
            problems.append(f"{table}: {outside.numel()} ids were not requested, e.g. {int(outside[0])}")
    if not bool(torch.isfinite(rows).all()):
        problems.append(f"{table}{ROWS} has non-finite values")
    if not bool(torch.isfinite(count).all()) or bool((count < 0).any()):
        problems.append(f"{table}{COUNT} must be finite and >= 0")
    elif max_count is not None and bool((count > max_count).any()):
        problems.append(f"{table}{COUNT} exceeds the client's sample count {max_count:g}")
    if not problems and bool(((count == 0).unsqueeze(1) & (rows != 0)).any()):
        problems.append(f"{table}: a row with zero count has a non-zero update")
    return problems


def validate_sparse_update(
    update: Mapping[str, torch.Tensor],
    full_shapes: Mapping[str, Sequence[int]],
    tables: Sequence[str],
    requested: Mapping[str, torch.Tensor] | None = None,
    max_count: float | None = None,
) -> list[str]:
    """Reasons to reject a sparse upload (empty list = acceptable).

    `full_shapes` are the server model's parameter shapes; `requested` the index sets this client was
    sent (its ids must be a subset); `max_count` bounds per-row counts (the client's sample count)."""
    problems: list[str] = []
    for table in tables:
        shape = tuple(full_shapes[weight_key(table)])
        req = None if requested is None else requested.get(table)
        problems += _validate_table(table, update, shape[0], shape[1], req, max_count)
    dense = dense_names(full_shapes, tables)
    sparse_keys = {t + s for t in tables for s in (IDX, ROWS, COUNT)}
    unexpected = sorted(set(update) - set(dense) - sparse_keys)
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}")
    for name in dense:
        tensor = update.get(name)
        if tensor is None:
            problems.append(f"missing dense delta {name}")
        elif tensor.dtype != torch.float32 or tuple(tensor.shape) != tuple(full_shapes[name]):
            problems.append(
                f"{name} must be float32 {tuple(full_shapes[name])}, got {tensor.dtype} {tuple(tensor.shape)}"
            )
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} has non-finite values")
    return problems


def _model_config(config: Mapping[str, object]) -> CTRModelConfig:
    model_json = config.get("model", {})
    if not isinstance(model_json, Mapping):
        raise ValueError("config['model'] must be an object")
    return CTRModelConfig.from_json(model_json)


def _train_and_measure(
    model: CTRModel,
    samples: CTRSamples,
    config: Mapping[str, object],
    seed: int,
    on_step: StepCallback | None,
) -> dict[str, float]:
    """Train (if there is anything to train on) and report the loss before and after."""
    training = LocalTrainingConfig.from_json(config)
    metrics: dict[str, float] = {"num_samples": float(len(samples)), "steps": 0.0, "planned_steps": 0.0}
    metrics["loss_before"] = evaluate_ctr(model, samples)["logloss"] if len(samples) else float("nan")
    started = time.perf_counter()
    if len(samples):
        metrics.update(train_ctr(model, samples, training, seed=seed, on_step=on_step))
    metrics["train_time_s"] = time.perf_counter() - started
    metrics["loss_after"] = evaluate_ctr(model, samples)["logloss"] if len(samples) else float("nan")
    metrics.setdefault("completed", 1.0)
    return metrics


def submodel_client_train(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, object],
    samples: CTRSamples,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> tuple[Weights, dict[str, float]]:
    """One phone's round: load the downloaded submodel, train it on the samples it can use, and return
    the sparse upload plus metrics. `config["model"]` is a CTRModelConfig in JSON form; the local
    training settings (epochs, batch_size, lr, optimizer, l2_emb, max_steps, deadline_s) sit at the top
    level of `config`."""
    tables = list(EMBEDDING_TABLES)
    sub_weights, index_sets = split_download(tensors, tables)
    local, dropped = localize_samples(samples, index_sets)
    model = CTRModel(
        int(index_sets["emb.item"].numel()), int(index_sets["emb.cat"].numel()), _model_config(config)
    )
    model.load_state_dict(sub_weights)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = _train_and_measure(model, local, config, seed, on_step)
    counts = row_counts(local, {t: int(index_sets[t].numel()) for t in tables})
    upload = sparse_update(before, model.state_dict(), index_sets, counts)
    metrics["samples_dropped"] = float(dropped)
    metrics["rows_requested"] = float(sum(int(ids.numel()) for ids in index_sets.values()))
    metrics["rows_trained"] = float(sum(int((c > 0).sum()) for c in counts.values()))
    return upload, metrics


def full_model_client_train(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, object],
    samples: CTRSamples,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> tuple[Weights, dict[str, float]]:
    """The FedAvg baseline's client: the same local training on the whole model, uploading the dense
    delta of every parameter (the whole embedding tables included)."""
    shapes = {t: tensors[weight_key(t)].shape[0] for t in EMBEDDING_TABLES}
    for table, names in EMBEDDING_TABLES.items():
        for name in names:
            ids = getattr(samples, name)
            if ids.numel() and int(ids.max()) >= shapes[table]:
                raise ValueError(f"{name} has ids beyond the {shapes[table]} rows of {table}")
    model = CTRModel(shapes["emb.item"], shapes["emb.cat"], _model_config(config))
    model.load_state_dict(dict(tensors))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = _train_and_measure(model, samples, config, seed, on_step)
    after = model.state_dict()
    return {k: (after[k] - before[k]).to(torch.float32) for k in before}, metrics
