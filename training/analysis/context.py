"""What a committed job's record holds, read back for analysis.

Everything comes from the rows and files the round engine wrote: the job's validated config, the test set
(the server's held-out data, which is also the influence estimate's "validation data"), the model spec,
and per committed round the phones whose uploads entered the aggregate, with their sample counts, step
counts, the config.json they were sent and the update they uploaded (storage.client_round_dir).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.fl.datasets import DatasetSplits, load_dataset
from training.fl.nets import build_model_from_spec, count_parameters, model_spec_for
from training.fl.strategy import Weights
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors
from training.jobs import storage
from training.jobs.config import INFLUENCE_ALGORITHMS, JobConfig, parse_job_config
from training.models import ClientState, Job, Round, RoundStatus

# "auto" turns influence on for models up to this size: ε is a (clients × parameters) float64 matrix
# and every round costs per-sample gradients of the whole model.
INFLUENCE_AUTO_MAX_PARAMS = 20_000
UPDATE_FILE = "update.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class JobAnalysisContext:
    job_id: int
    config: JobConfig
    splits: DatasetSplits
    model_spec: dict[str, Any]
    num_parameters: int
    server_lr: float
    influence_enabled: bool
    influence_reason: str  # why it is on or off, in words (shown on the dashboard)
    identity: str = ""  # "<id>:<created_at>": files of an older job with the same id are not this job's

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits.test.x, self.splits.test.y

    @property
    def backdoor_test(self) -> bool:
        return self.config.backdoor_test

    @property
    def has_work(self) -> bool:
        return self.influence_enabled or self.backdoor_test


_DATA_CACHE: dict[tuple[str, int, str], DatasetSplits] = {}


def _dataset(config: JobConfig) -> DatasetSplits:
    """The job's data set; cached per process (the training worker analyses every round of a job)."""
    key = (config.dataset, config.data_seed, repr(sorted(config.dataset_params.items())))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(config.dataset, seed=config.data_seed, **config.dataset_params)
    return _DATA_CACHE[key]


def influence_decision(config: JobConfig, num_parameters: int) -> tuple[bool, str]:
    """Resolve the job's influence mode (auto/on/off) into on or off, with the reason."""
    if config.influence == "off":
        return False, "off (the job's setting)"
    if config.data_on_phone:  # the estimate needs each phone's data size and steps, which stay on the phone
        return False, "off: the data stays on the phones"
    if config.algorithm not in INFLUENCE_ALGORITHMS:
        return False, f"off: {config.algorithm} uploads are not model deltas"
    if config.influence == "on":
        return True, "on (the job's setting)"
    if num_parameters <= INFLUENCE_AUTO_MAX_PARAMS:
        return True, f"on (auto: {num_parameters:,} parameters ≤ {INFLUENCE_AUTO_MAX_PARAMS:,})"
    return False, f"off (auto: {num_parameters:,} parameters > {INFLUENCE_AUTO_MAX_PARAMS:,}; set it on)"


def job_context(job: Job) -> JobAnalysisContext:
    config = parse_job_config(job.config)
    splits = _dataset(config)
    spec = model_spec_for(
        config.model,
        input_shape=splits.feature_shape,
        num_classes=splits.num_classes,
        **splits.model_kwargs,
        **config.model_params,
    )
    parameters = count_parameters(build_model_from_spec(spec))
    enabled, reason = influence_decision(config, parameters)
    server_lr = config.algorithm_params.get("server_lr", 1.0)
    return JobAnalysisContext(
        job_id=job.pk,
        config=config,
        splits=splits,
        model_spec=spec,
        num_parameters=parameters,
        server_lr=float(server_lr) if isinstance(server_lr, int | float) else 1.0,
        influence_enabled=enabled,
        influence_reason=reason,
        identity=f"{job.pk}:{job.created_at.isoformat()}",
    )


# ------------------------------------------------------------------------------------ recorded rounds


@dataclass(frozen=True)
class RecordedUpdate:
    """One phone's upload that entered a committed round's aggregate."""

    device_id: int
    num_samples: int
    steps: int  # local SGD steps it reported, clamped to what its shard allows
    round_dir: Path

    @property
    def client_id(self) -> str:
        return str(self.device_id)

    def delta(self, names: list[str]) -> Weights:
        """The uploaded delta, restricted to the model's own tensors (a safetensors file: no code runs)."""
        tensors = load_tensors(self.round_dir / UPDATE_FILE, max_bytes=DEFAULT_MAX_UPDATE_BYTES)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"update of device {self.device_id} lacks {', '.join(missing)}")
        return {n: tensors[n] for n in names}

    def sent_config(self) -> dict[str, Any]:
        """The config.json the server wrote for this phone and round (server-written, trusted)."""
        import json  # noqa: PLC0415

        data = json.loads((self.round_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.round_dir / CONFIG_FILE} is not an object")
        return data


@dataclass(frozen=True)
class RecordedRound:
    number: int
    attempt: int
    updates: tuple[RecordedUpdate, ...]

    @property
    def client_ids(self) -> list[str]:
        return [u.client_id for u in self.updates]


def planned_steps(num_samples: int, config: JobConfig) -> int:
    return -(-max(num_samples, 1) // config.batch_size) * config.local_epochs


def recorded_round(job: Job, config: JobConfig, number: int) -> RecordedRound:
    """The committed attempt of round `number` and the uploads that entered it."""
    rnd = Round.objects.get(job=job, number=number, status=RoundStatus.COMMITTED)
    shard_sizes = dict(job.participants.values_list("device_id", "num_samples"))
    updates = []
    for result in rnd.client_results.filter(state=ClientState.REPORTED).order_by("device_id"):
        reported = result.metrics.get("steps", 0)
        steps = int(reported) if isinstance(reported, int | float) and reported > 0 else 0
        # A phone reports its own step count; never trust it beyond what its shard allows.
        steps = min(steps, planned_steps(shard_sizes.get(result.device_id, 0), config))
        updates.append(
            RecordedUpdate(
                device_id=result.device_id,
                num_samples=int(result.num_samples or 0),
                steps=steps,
                round_dir=storage.client_round_dir(job.pk, number, rnd.attempt, result.device_id),
            )
        )
    return RecordedRound(number=number, attempt=rnd.attempt, updates=tuple(updates))


def global_weights(job_id: int, round_no: int) -> Weights:
    """w_t: the global model after round t (t = 0: the initial model)."""
    return storage.load_checkpoint(job_id, round_no).weights
