"""`train <round dir>`: load the round's inputs, train with training/fl's client code, write the outputs.

Stdout carries one JSON object per line, flushed as it happens, for the platform to relay live:
    {"event": "progress", "epoch": 1, "step": 3, "steps": 40, "loss": 2.1, "elapsed_s": 0.02}
    {"event": "done", "samples": ..., "steps": ..., "loss": ..., ...}          (exit status 0)
    {"event": "error", "message": "..."}                                      (exit status 1)

Environment (set by the phone, not by the platform's config — a virtual phone uses them to act out its
profile): FEDFLEET_SLOWDOWN = f ≥ 1 stretches training wall time by f (after each step the agent sleeps
(f − 1) × that step's time), so a slower phone takes proportionally longer; FEDFLEET_BEHAVIOUR names a
misbehaviour (default "honest").

`agent.pyz serve` (serve.py) runs the same two functions in its long-lived process, with a cancel event
checked after every step (a cancelled run raises TrainingCancelled and leaves no output files) and a
shard loader that keeps the job's data in memory between rounds.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from training.agent import AGENT_VERSION, CONFIG_FORMAT
from training.agent.round_config import (
    GLOBAL_FILE,
    OUTPUT_FILES,
    REQUEST_FILE,
    RESULT_FILE,
    UPDATE_FILE,
    AgentError,
    RoundConfig,
    read_config,
)
from training.fl.client import (
    BEHAVIOUR_ENV,
    HONEST,
    ClientTask,
    LocalTrainingResult,
    Progress,
    TrainingDiverged,
    client_train,
)
from training.fl.misbehaviour import load_behaviour
from training.fl.nets import build_model_from_spec, is_ctr_spec, submodel_spec
from training.fl.wire import InvalidUpdate, dumps_tensors, load_tensors, validate_update, write_bytes_atomic

SLOWDOWN_ENV = "FEDFLEET_SLOWDOWN"


class TrainingCancelled(AgentError):
    """The run was cancelled (serve's cancel request) and stopped after its current step."""


def emit(stream: TextIO, event: str, **fields: Any) -> None:
    """One JSON line, flushed at once (the platform reads the phone's stdout as a live stream)."""
    stream.write(json.dumps({"event": event, **_json_safe(fields)}, allow_nan=False) + "\n")
    stream.flush()


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; report them as null rather than emit an unparsable line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def slowdown_from_env(environ: Mapping[str, str]) -> float:
    text = environ.get(SLOWDOWN_ENV, "").strip()
    if not text:
        return 1.0
    try:
        factor = float(text)
    except ValueError:
        raise AgentError(f"{SLOWDOWN_ENV} must be a number >= 1, got {text!r}") from None
    if not (math.isfinite(factor) and factor >= 1.0):
        raise AgentError(f"{SLOWDOWN_ENV} must be a number >= 1, got {text!r}")
    return factor


def behaviour_from_env(environ: Mapping[str, str]) -> str:
    return environ.get(BEHAVIOUR_ENV, "").strip() or HONEST


@dataclass
class _ProgressPrinter:
    """The progress callback: prints every k-th step (and the last) and acts out the slowdown."""

    stream: TextIO
    every: int
    slowdown: float
    sleep: Callable[[float], None] = time.sleep
    compute_s: float = 0.0  # time spent in SGD steps, excluding the slowdown sleeps
    cancel: threading.Event | None = None  # set by serve's cancel request: stop after this step

    def __call__(self, p: Progress) -> None:
        self.compute_s += p.step_time_s
        self.check_cancel(p.step)
        if p.step % self.every == 0 or p.step == p.steps:
            emit(
                self.stream,
                "progress",
                epoch=p.epoch,
                step=p.step,
                steps=p.steps,
                loss=p.loss,
                elapsed_s=p.elapsed_s,
            )
        if self.slowdown > 1.0:
            pause = (self.slowdown - 1.0) * p.step_time_s
            if self.cancel is not None:
                self.cancel.wait(pause)  # a cancel ends the pause at once
                self.check_cancel(p.step)
            else:
                self.sleep(pause)

    def check_cancel(self, step: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled(f"cancelled after {step} steps")


ShardLoader = Callable[[RoundConfig], tuple[torch.Tensor, torch.Tensor]]


def load_shard(config: RoundConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The phone's data: `x` float32 (n, *input_shape), `y` int64 (n,) with labels < num_classes.
    CTR shards hold ids, so their `x` is int64 (packed by `CTRSamples.to_xy`, checked by its `from_xy`).
    A phone-resident job reads the phone's own file instead (local_data.py)."""
    if config.local_data is not None:
        from training.agent.local_data import load_local_data  # noqa: PLC0415 - only such jobs need it

        num_classes = config.model.get("num_classes")
        return load_local_data(
            config.shard,
            input_shape=tuple(int(d) for d in config.model.get("input_shape", ())),
            num_classes=num_classes if isinstance(num_classes, int) else None,
            max_bytes=config.max_shard_bytes,
        )
    try:
        tensors = load_tensors(config.shard, max_bytes=config.max_shard_bytes)
    except InvalidUpdate as exc:
        raise AgentError(f"data shard {config.shard}: {exc.reason}") from None
    missing = [k for k in ("x", "y") if k not in tensors]
    if missing:
        raise AgentError(f"data shard {config.shard} lacks {', '.join(missing)}")
    x, y = tensors["x"], tensors["y"]
    input_shape = tuple(config.model.get("input_shape", ()))
    num_classes = config.model.get("num_classes")
    x_dtype = torch.int64 if is_ctr_spec(config.model) else torch.float32
    if x.dtype != x_dtype or y.dtype != torch.int64:
        raise AgentError(f"data shard: x must be {x_dtype} and y int64, got {x.dtype} and {y.dtype}")
    if y.dim() != 1 or x.shape[0] != y.shape[0] or len(y) == 0:
        raise AgentError(
            f"data shard: x has shape {list(x.shape)} and y {list(y.shape)}; need n ≥ 1 rows each"
        )
    if tuple(x.shape[1:]) != input_shape:
        raise AgentError(
            f"data shard: samples have shape {list(x.shape[1:])}, the model expects {list(input_shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise AgentError("data shard: x has NaN or infinite values")
    if isinstance(num_classes, int) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise AgentError(
            f"data shard: labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}"
        )
    return x, y


def load_global(round_dir: Path, config: RoundConfig) -> dict[str, torch.Tensor]:
    try:
        received = load_tensors(round_dir / GLOBAL_FILE, max_bytes=config.max_update_bytes)
    except InvalidUpdate as exc:
        raise AgentError(f"global weights: {exc.reason}") from None
    try:
        # A submodel download is checked against a model of the submodel's own size.
        model = build_model_from_spec(submodel_spec(config.model, received))
    except ValueError as exc:
        raise AgentError(f"model: {exc}") from None
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    own = {k: v for k, v in received.items() if k in expected}  # the rest are strategy extras
    errors = validate_update(own, expected, max_bytes=config.max_update_bytes)
    if errors:
        raise AgentError("global weights do not fit the model: " + "; ".join(errors))
    return received


def run_train(
    round_dir: Path,
    *,
    stdout: TextIO,
    environ: Mapping[str, str],
    default_work_dir: Path,
    cancel: threading.Event | None = None,
    shard_loader: ShardLoader | None = None,
) -> None:
    """Everything `train` does; raises AgentError (or any exception) on failure, which the CLI reports.
    `cancel` and `shard_loader` (default: load_shard from disk) are serve's."""
    started = time.perf_counter()
    if not round_dir.is_dir():
        raise AgentError(f"round dir {round_dir} does not exist")
    for name in OUTPUT_FILES:  # a retried round must never leave last attempt's output to be pulled
        (round_dir / name).unlink(missing_ok=True)
    slowdown = slowdown_from_env(environ)
    behaviour = behaviour_from_env(environ)
    config = read_config(round_dir, default_work_dir=default_work_dir)
    received = load_global(round_dir, config)
    x, y = (shard_loader or load_shard)(config)
    if config.state_dir is not None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    loaded = time.perf_counter()

    printer = _ProgressPrinter(stdout, config.progress_every, slowdown, cancel=cancel)
    printer.check_cancel(0)
    task = ClientTask(
        config=config.raw,
        received=received,
        x=x,
        y=y,
        state_dir=config.state_dir,
        progress=printer,
        behaviour=behaviour,
    )
    try:
        result = client_train(task)
    except (ValueError, TrainingDiverged) as exc:
        raise AgentError(str(exc)) from None
    trained = time.perf_counter()

    update = dumps_tensors(result.upload())
    if len(update) > config.max_update_bytes:
        raise AgentError(f"update is {len(update)} bytes, over the {config.max_update_bytes}-byte limit")
    write_bytes_atomic(round_dir / UPDATE_FILE, update)
    timings = {
        "load_s": loaded - started,
        "train_s": trained - loaded,
        "compute_s": printer.compute_s,
        "write_s": time.perf_counter() - trained,
    }
    timings["total_s"] = time.perf_counter() - started
    summary = result_summary(config, result, update, timings, slowdown)
    summary["samples"] = load_behaviour(behaviour).reported_samples(result.num_samples)  # a liar lies here
    if config.local_data is not None:
        summary.update(local_data_report(config, y, summary["samples"]))
        if not config.local_data.report:  # step counts would tell the sample count: ceil(n / B) · E
            summary.pop("steps", None)
            summary.pop("planned_steps", None)
    write_bytes_atomic(
        round_dir / RESULT_FILE, json.dumps(_json_safe(summary), indent=1, allow_nan=False).encode()
    )
    emit(stdout, "done", **{k: v for k, v in summary.items() if k != "format"})


def local_data_report(config: RoundConfig, y: torch.Tensor, samples: int) -> dict[str, Any]:
    """What result.json says of a phone's own data: the file's name always; its sample count and label
    histogram only when the job allows (else the update counts with weight 1 and nothing is told)."""
    assert config.local_data is not None
    num_classes = config.model.get("num_classes")
    if not config.local_data.report or not isinstance(num_classes, int):
        return {"samples": 1, "local_data": {"file": config.shard.name, "reported": False}}
    from training.agent.local_data import label_histogram  # noqa: PLC0415

    histogram = label_histogram(y, num_classes)
    return {
        "samples": samples,
        "local_data": {"file": config.shard.name, "reported": True, "label_counts": histogram},
    }


def run_request(
    round_dir: Path, *, stdout: TextIO, default_work_dir: Path, shard_loader: ShardLoader | None = None
) -> None:
    """`request <round dir>` (submodel jobs): this phone's index request for the round, randomized over
    the union U (the file config.json names, else global.safetensors) with the job's privacy preset. The permanent stage is memoised in the
    job's state dir on the phone, so rounds together never reveal more than it (index_privacy.py)."""
    from training.fl.fedsubavg import fedsubavg_client_request  # noqa: PLC0415 - submodel jobs only

    if not round_dir.is_dir():
        raise AgentError(f"round dir {round_dir} does not exist")
    (round_dir / REQUEST_FILE).unlink(missing_ok=True)
    config = read_config(round_dir, default_work_dir=default_work_dir)
    union_file = config.union if config.union is not None else round_dir / GLOBAL_FILE
    received: dict[str, torch.Tensor] = {}
    if config.union is not None or union_file.exists():
        # No union named and none in the round dir: a preset without decoys, which does not need one
        # (fedsubavg_client_request says so if it does).
        try:
            received = load_tensors(union_file, max_bytes=config.max_update_bytes)
        except InvalidUpdate as exc:
            raise AgentError(f"union of ids ({union_file.name}): {exc.reason}") from None
    x, y = (shard_loader or load_shard)(config)
    if config.state_dir is not None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        request = fedsubavg_client_request(config.raw, received, x, y, config.state_dir)
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    data = dumps_tensors(request)
    write_bytes_atomic(round_dir / REQUEST_FILE, data)
    emit(
        stdout,
        "done",
        request_file=REQUEST_FILE,
        request_bytes=len(data),
        rows={name: int(ids.numel()) for name, ids in request.items()},
    )


def result_summary(
    config: RoundConfig,
    result: LocalTrainingResult,
    update: bytes,
    timings: dict[str, float],
    slowdown: float,
) -> dict[str, Any]:
    # Algorithm-specific metrics first (e.g. SCAFFOLD's scaffold_ci_reset, so the platform can note a
    # phone that lost its control variate); the fixed keys below win on a name clash.
    return {
        **result.metrics(),
        "format": CONFIG_FORMAT,
        "agent_version": AGENT_VERSION,
        "algorithm": config.algorithm,
        "round": config.raw.get("round"),
        "client_id": config.raw.get("client_id"),
        "samples": result.num_samples,
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "epochs_done": result.epochs_done,
        "stop_reason": result.stop_reason,
        "completed": result.completed,
        "loss": result.loss_after,
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "train_time_s": timings["train_s"],
        "timings": timings,
        "slowdown": slowdown,
        "update_file": UPDATE_FILE,
        "update_bytes": len(update),
        "update_sha256": hashlib.sha256(update).hexdigest(),
    }
