"""What the engine derives from a job and keeps per process: its config, data set, model spec and strategy.

A prepared job's data set and participants never change, so each worker process loads them once
(`job_data`, `total_samples`); everything else is re-read from the database on every call.
"""

from __future__ import annotations

import logging
from typing import Any

from training.fl.datasets import DatasetSplits, load_dataset
from training.fl.nets import model_spec_for
from training.fl.registry import JobContext, make_strategy
from training.fl.strategy import Strategy
from training.jobs.config import JobConfig, parse_job_config, strategy_params
from training.models import (
    Job,
)

log = logging.getLogger(__name__)


def job_config(job: Job) -> JobConfig:
    return parse_job_config(job.config)


def load_job_dataset(config: JobConfig) -> DatasetSplits:
    return load_dataset(config.dataset, seed=config.data_seed, **config.dataset_params)


def job_model_spec(config: JobConfig, splits: DatasetSplits) -> dict[str, Any]:
    return model_spec_for(
        config.model,
        input_shape=splits.feature_shape,
        num_classes=splits.num_classes,
        **splits.model_kwargs,  # e.g. the CTR model's embedding table sizes
        **config.model_params,  # the job's sizes (hidden widths, channels, a plug-in's parameters)
    )


def build_strategy(config: JobConfig, num_clients: int, total_samples: int | None = None) -> Strategy:
    context = JobContext(
        num_clients=num_clients,
        lr=config.lr,
        total_samples=total_samples,
        clients_per_round=config.clients_per_round,
    )
    return make_strategy(config.algorithm, strategy_params(config), context)


def job_strategy(job: Job, config: JobConfig) -> Strategy:
    return build_strategy(config, job.participants.count(), total_samples(job))


# Per-process caches of what never changes once a job is prepared (its data set and participants).
_DATA_CACHE: dict[int, DatasetSplits] = {}


_TOTAL_CACHE: dict[int, int] = {}


def job_data(job: Job, config: JobConfig) -> DatasetSplits:
    if job.pk not in _DATA_CACHE:
        _DATA_CACHE[job.pk] = load_job_dataset(config)
    return _DATA_CACHE[job.pk]


def cached_model_spec(job: Job, config: JobConfig) -> dict[str, Any]:
    return job_model_spec(config, job_data(job, config))


def total_samples(job: Job) -> int:
    if job.pk not in _TOTAL_CACHE:
        sizes = list(job.participants.values_list("num_samples", flat=True))
        if 0 in sizes:  # a phone-resident job whose phones have not all reported yet: not final
            return sum(sizes)
        _TOTAL_CACHE[job.pk] = sum(sizes)
    return _TOTAL_CACHE[job.pk]
