"""Where a simulation round's batches leave their clients' updates, and reading them back for aggregation.

Apart from sim_training.py (which trains the batches and closes the round when the last one is in) so
that closing.py can read the updates without importing the trainer that imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.fl.strategy import ClientUpdate
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors
from training.jobs import storage
from training.models import ClientResult, Round


def sim_round_dir(job_id: int, round_no: int, attempt: int) -> Path:
    return storage.job_dir(job_id) / "sim" / f"round-{round_no}.{attempt}"


def simulated_updates(
    rnd: Round, reported: Sequence[ClientResult], shard_samples: dict[int, int]
) -> list[ClientUpdate]:
    """The reported simulated clients' updates from their batch files (closing.py's aggregation)."""
    directory = sim_round_dir(rnd.job_id, rnd.number, rnd.attempt)
    files: dict[str, dict[str, torch.Tensor]] = {}
    updates = []
    for result in reported:
        name = str(result.metrics.get("sim_file", ""))
        if name not in files:
            files[name] = load_tensors(directory / name, max_bytes=DEFAULT_MAX_UPDATE_BYTES * 10_000)
        prefix = f"{result.client_index}/"
        tensors = {k[len(prefix) :]: v for k, v in files[name].items() if k.startswith(prefix)}
        metrics: dict[str, Any] = result.metrics
        updates.append(
            ClientUpdate(
                client_id=result.client_id,
                num_samples=shard_samples[int(result.client_index or 0)],
                tensors=tensors,
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            )
        )
    return updates
