"""Configuration (step 2): what one phone receives in a round — the model (or submodel) and its config.json."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from training.engine import phone_data
from training.engine.jobdata import cached_model_spec, job_config, total_samples
from training.fl.client import client_config_for_round
from training.fl.wire import save_tensors, write_bytes_atomic
from training.jobs import storage
from training.jobs.config import JobConfig
from training.models import (
    Job,
    Participant,
    Round,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY_STEPS = 5


def base_agent_config(config: JobConfig) -> dict[str, Any]:
    """Local-training settings every phone receives; strategies add their own keys."""
    return {
        "lr": config.lr,
        "epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "seed": config.seed,
        # Model replacement's default boost γ = clients per round / server lr (misbehaviour.py) reads it.
        "clients_per_round": config.clients_per_round,
        **{k: v for k, v in config.algorithm_params.items()},
        "deadline_s": max(1.0, config.round_deadline_s * 0.9),
        # A progress line every few steps: the dashboard shows at most 4 updates a second per phone
        # anyway, and each line is an ADB packet the phone, the lab and the worker must handle.
        "progress_every": PROGRESS_EVERY_STEPS,
    }


def write_payload(
    job: Job, rnd: Round, participant: Participant, tensors: dict[str, torch.Tensor], extra: dict[str, Any]
) -> int:
    """Write what one phone receives this round; return the bytes it will download."""
    device = participant.device
    config = job_config(job)
    splits_spec = cached_model_spec(job, config)
    agent_config = {
        **client_config_for_round(extra, job_seed=config.seed, round_no=rnd.number, client_id=str(device.pk)),
        # The client side the strategy names (FullModelFedAvg runs the "fedsubavg" client), else the job's.
        "algorithm": str(extra.get("algorithm", config.algorithm)),
        "job": job.pk,
        "attempt": rnd.attempt,
        "model": splits_spec,
        "shard": storage.relative_shard_path(job.pk),
        "state_dir": storage.relative_state_dir(job.pk),
        # A phone-resident job names the phone's own files instead of a shard (engine/phone_data.py).
        **(phone_data.agent_config(config) if config.data_on_phone else {}),
        "num_clients": job.participants.count(),
        "num_samples": participant.num_samples,
        "total_samples": total_samples(job),
    }
    directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, device.pk)
    save_tensors(directory / "global.safetensors", tensors)
    write_bytes_atomic(directory / "config.json", json.dumps(agent_config, sort_keys=True).encode())
    return sum(p.stat().st_size for p in directory.iterdir())
