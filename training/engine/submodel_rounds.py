"""The request step of submodel jobs (FedSubAvg, ALGORITHMS.md §6) on the platform's side.

A strategy with `requires_index_request` cannot configure a phone before it knows which embedding rows
that phone asks for. So a round of such a job goes (rounds.py, uploads.py and client.py call these helpers):

  start_round   every chosen phone gets the *request payload*: config.json = the job's config with the
                privacy preset, naming the union U of ids (`<table>.union`) in the job's union file
                (`request_plan`; U is fixed for the job, so it is written once and a phone is sent it
                only when its copy differs, like its data shard)
  run_client    push them, run `agent.pyz request <round dir>` (randomized response over U; the permanent
                stage memoised in the job's state dir on the phone), pull request.safetensors, check it
                (`request_errors`: in U, sorted, unique, no bigger than U — else the phone is rejected
                with the reason), record it in the server's round dir (`record_request`), then
                `uploads.configure_client` writes that phone's submodel download, which is pushed and
                trained as in any job
  validation    `restore_requests` puts the recorded requests back into the strategy state, so an upload
                is checked against *its own phone's* request — also after a worker restart, since the
                record is a file in the round dir, not memory

The union U is computed by the server from the phones' real index sets at `prepare_job` (the lab's
shards); a private set union by secure aggregation is a later step, so today the server knows U.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.agent.round_config import REQUEST_FILE
from training.fl.ctr_model import CTRSamples
from training.fl.datasets import Dataset
from training.fl.index_privacy import PrivacyPreset
from training.fl.strategy import ClientInstructions, ServerState, Strategy
from training.fl.submodel import IDX, index_sets_of, union_of
from training.fl.wire import load_tensors, save_tensors

# Room for safetensors' JSON header on top of the raw int64 ids.
REQUEST_SLACK_BYTES = 64 * 1024


def needs_request(strategy: Strategy) -> bool:
    """Does this strategy need each phone's index request before it can configure it?"""
    return bool(getattr(strategy, "requires_index_request", False))


def set_union_from_shards(strategy: Any, state: ServerState, shards: Sequence[Dataset]) -> None:
    """Record U = the union of the phones' real ids (the lab knows the shards; see the module docstring)."""
    real = [index_sets_of(CTRSamples.from_xy(shard.x, shard.y)) for shard in shards]
    strategy.set_union(state, union_of(real))


def request_plan(
    strategy: Any,
    state: ServerState,
    client_ids: Sequence[str],
    base_config: Mapping[str, Any],
    *,
    union_file: Path,
    union_on_phone: str,
) -> list[ClientInstructions]:
    """What each chosen phone receives first: the request config (the same for every phone), naming U
    at `union_on_phone` (relative to the phone's work dir) when the privacy preset draws decoys from
    it. U is written to `union_file` once; the round payload itself holds no tensors."""
    tensors, config = strategy.request_round_inputs(state, base_config)
    if PrivacyPreset.from_json(config["index_privacy"]).adds_decoys:
        if not union_file.exists():
            save_tensors(union_file, dict(tensors))  # atomic; U never changes for a prepared job
        config = {**config, "union": union_on_phone}
    return [ClientInstructions(client_id=cid, tensors={}, config=dict(config)) for cid in client_ids]


def max_request_bytes(strategy: Any, state: ServerState) -> int:
    """A request can hold at most the whole union: anything bigger is not pulled at all."""
    return sum(8 * int(ids.numel()) for ids in strategy.union(state).values()) + REQUEST_SLACK_BYTES


def request_errors(strategy: Any, state: ServerState, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Reasons to reject a phone's index request (empty: accept), most specific first."""
    problems: list[str] = []
    for table, union in strategy.union(state).items():
        ids = tensors.get(table + IDX)
        if ids is None or ids.dim() != 1:
            continue  # parse_request names it
        if ids.numel() > union.numel():
            problems.append(
                f"{table}{IDX} asks for {ids.numel()} rows, more than the union's {union.numel()}"
            )
        elif torch.unique(ids).numel() != ids.numel():
            problems.append(f"{table}{IDX} has {ids.numel() - torch.unique(ids).numel()} duplicate ids")
        elif ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
            problems.append(f"{table}{IDX} is not sorted")
    if problems:
        return problems
    try:
        strategy.parse_request(state, tensors)
    except ValueError as exc:
        return [str(exc)]
    return []


def recorded_request_path(client_round_dir: Path) -> Path:
    return client_round_dir / REQUEST_FILE


def record_request(client_round_dir: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Keep an accepted request in the server's round dir (atomic write: a crash leaves none or all)."""
    save_tensors(recorded_request_path(client_round_dir), dict(tensors))


def load_recorded_request(strategy: Any, state: ServerState, client_round_dir: Path) -> Any:
    """The recorded, already checked request of one phone, or None if it has none yet."""
    path = recorded_request_path(client_round_dir)
    if not path.exists():
        return None
    tensors = load_tensors(path, max_bytes=max_request_bytes(strategy, state))
    return strategy.parse_request(state, tensors)


def restore_requests(
    strategy: Any, state: ServerState, round_no: int, client_dirs: Mapping[str, Path]
) -> None:
    """Put the phones' recorded requests into `state` (client id -> its round dir on the server)."""
    for client_id, directory in client_dirs.items():
        request = load_recorded_request(strategy, state, directory)
        if request is not None:
            strategy.set_request(state, round_no, client_id, request)
