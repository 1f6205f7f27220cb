"""What a phone may upload in a round, and — for submodel jobs — what it downloads after its index request.

The strategy decides what is valid; these wrappers give it the round's checkpoint (and, for submodel
jobs, the phone's own recorded request: submodel_rounds.py).
"""

from __future__ import annotations

import logging

import torch

from training.engine import submodel_rounds
from training.engine.configure import base_agent_config, write_payload
from training.engine.jobdata import job_config, job_strategy
from training.jobs import storage
from training.models import (
    Job,
    Participant,
    Round,
)

log = logging.getLogger(__name__)


def upload_errors(
    rnd: Round, client_id: str, tensors: dict[str, torch.Tensor], num_samples: int
) -> list[str]:
    """Reasons to reject one phone's upload for this round (the strategy decides what is valid)."""
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    strategy = job_strategy(job, job_config(job))
    if submodel_rounds.needs_request(strategy):  # checked against this phone's own recorded request
        directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, int(client_id))
        submodel_rounds.restore_requests(strategy, state, rnd.number, {client_id: directory})
    return strategy.validate_upload(state, client_id, tensors, num_samples)


def job_needs_request(job: Job) -> bool:
    """Does this job's strategy configure each phone only after its index request (FedSubAvg)?"""
    return submodel_rounds.needs_request(job_strategy(job, job_config(job)))


def request_errors(rnd: Round, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Reasons to reject one phone's index request for this round (empty: accept)."""
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    return submodel_rounds.request_errors(job_strategy(job, job_config(job)), state, tensors)


def max_request_bytes(rnd: Round) -> int:
    job = rnd.job
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    return submodel_rounds.max_request_bytes(job_strategy(job, job_config(job)), state)


def configure_client(rnd: Round, participant: Participant) -> int:
    """Write one phone's submodel download from its recorded request; returns its size in bytes.
    Idempotent: the same checkpoint and request always give the same files."""
    job = rnd.job
    config = job_config(job)
    strategy = job_strategy(job, config)
    state = storage.load_checkpoint(job.pk, rnd.number - 1)
    client_id = str(participant.device_id)
    directory = storage.client_round_dir(job.pk, rnd.number, rnd.attempt, participant.device_id)
    submodel_rounds.restore_requests(strategy, state, rnd.number, {client_id: directory})
    (instructions,) = strategy.configure(state, rnd.number, [client_id], base_agent_config(config))
    write_payload(job, rnd, participant, instructions.tensors, instructions.config)
    return sum((directory / name).stat().st_size for name in ("global.safetensors", "config.json"))
