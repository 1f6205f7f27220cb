"""The round directory's contract: file names and config.json, parsed with a clear error for anything off.

A round dir on the phone holds, before training (pushed by the platform):
    config.json          the round config (schema below)
    global.safetensors   the global weights (and any strategy extras, e.g. `scaffold.c.<name>`)
Submodel jobs (FedSubAvg) first run `request <round dir>`: the union of item ids (`<table>.union`) is
read from the file config.json's `union` names (kept in the job's dir on the phone and pushed only when
it changed), or else from global.safetensors; the agent writes request.safetensors (`<table>.idx`, its
randomized index request); the platform then replaces config.json with this phone's submodel config and
global.safetensors with its submodel.
And after training (written by the agent, pulled by the platform):
    update.safetensors   the upload: the delta y − x under parameter names (+ strategy extras)
    result.json          written last, atomically: its presence means the update is complete

config.json (unknown keys are allowed: client algorithms read their own, e.g. FedLaAvg's `num_clients`):
    algorithm    str, required     CLIENT_ALGORITHMS key: "fedavg", "fedprox", ...
    model        object, required  model spec {"name", "input_shape", "num_classes", ...model kwargs}
    lr           number, required  local step size η
    epochs       int = 1           local epochs E
    batch_size   int = 10          minibatch size B
    mu           number = 0        FedProx proximal coefficient
    seed         int = 0           the client's own seed for this round (client_config_for_round)
    max_steps    int | null        stop after this many SGD steps (partial work is reported)
    deadline_s   number | null     stop once training has run this long (partial work is reported)
    shard        str, required     safetensors file with `x` (float32, n × input_shape), `y` (int64, n);
                                   not needed with local_data
    local_data   object | null     phone-resident data: {"dir": "data", "report": false} — train on the
                                   phone's own dir/train.npz or dir/train.csv (local_data.py); report:
                                   whether result.json may carry its sample count and label histogram
    state_dir    str | null        persistent per-client directory (SCAFFOLD's c_i); created if missing
    union        str | null        `request` only: safetensors file with the union U (`<table>.union`)
    work_dir     str | null        base for relative `shard` / `state_dir` / `union`; default: the directory that
                                   holds agent.pyz (the phone's work dir), else the current directory
    progress_every     int = 1     print a progress line every k steps (the last step always prints)
    max_update_bytes   int = 64 MiB   limit for global.safetensors and the update
    max_shard_bytes    int = 1 GiB    limit for the shard file
    round, client_id, job          optional; echoed into result.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.fl.client import LocalTrainingConfig
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES

CONFIG_FILE = "config.json"
GLOBAL_FILE = "global.safetensors"
UPDATE_FILE = "update.safetensors"
RESULT_FILE = "result.json"
REQUEST_FILE = "request.safetensors"  # the request step's output (submodel jobs)
# Written into the round dir by the platform to stop a run (exec mode): the agent stops after its step.
CANCEL_FILE = "cancel"
OUTPUT_FILES = (UPDATE_FILE, RESULT_FILE)

DEFAULT_MAX_SHARD_BYTES = 1024 * 1024 * 1024
DATA_FILES = ("train.npz", "train.csv")  # a phone's own data, in its local_data dir (first found wins)
DEFAULT_LOCAL_DATA_DIR = "data"
MAX_CONFIG_BYTES = 1024 * 1024


class AgentError(Exception):
    """A problem the agent reports as {"event": "error", "message": ...} and a non-zero exit."""


@dataclass(frozen=True)
class LocalData:
    """config.json's `local_data`: where the phone's own files are and whether counts may be reported."""

    dir: Path
    report: bool

    def data_file(self) -> Path:
        """The first of train.npz / train.csv present (train.npz when neither is: reading it says so)."""
        for name in DATA_FILES:
            if (self.dir / name).is_file():
                return self.dir / name
        return self.dir / DATA_FILES[0]


def parse_local_data(raw: Any, work_dir: Path) -> LocalData | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise AgentError(f"{CONFIG_FILE}: local_data must be an object")
    folder = raw.get("dir", DEFAULT_LOCAL_DATA_DIR)
    if not isinstance(folder, str) or not folder or ".." in Path(folder).parts:
        raise AgentError(f"{CONFIG_FILE}: local_data.dir must be a path inside the work dir")
    report = raw.get("report", False)
    if not isinstance(report, bool):
        raise AgentError(f"{CONFIG_FILE}: local_data.report must be true or false")
    path = Path(folder)
    return LocalData(dir=path if path.is_absolute() else work_dir / path, report=report)


@dataclass(frozen=True)
class RoundConfig:
    raw: dict[str, Any]  # the whole config.json, handed to the client algorithm
    algorithm: str
    model: dict[str, Any]
    local: LocalTrainingConfig
    shard: Path
    state_dir: Path | None
    union: Path | None
    progress_every: int
    max_update_bytes: int
    max_shard_bytes: int
    local_data: LocalData | None = None  # set: `shard` is the phone's own data file, not a pushed shard


def read_config(round_dir: Path, *, default_work_dir: Path) -> RoundConfig:
    path = round_dir / CONFIG_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AgentError(f"no {CONFIG_FILE} in {round_dir}") from None
    if size > MAX_CONFIG_BYTES:
        raise AgentError(f"{CONFIG_FILE} is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgentError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    return parse_config(raw, default_work_dir=default_work_dir)


def parse_config(raw: Any, *, default_work_dir: Path) -> RoundConfig:
    if not isinstance(raw, dict):
        raise AgentError(f"{CONFIG_FILE} must hold a JSON object")
    required = ("algorithm", "model", "lr") + (() if raw.get("local_data") is not None else ("shard",))
    for key in required:
        if key not in raw:
            raise AgentError(f"{CONFIG_FILE}: missing required key {key!r}")
    algorithm, model = raw["algorithm"], raw["model"]
    if not isinstance(algorithm, str):
        raise AgentError(f"{CONFIG_FILE}: algorithm must be a string")
    if not isinstance(model, dict):
        raise AgentError(f"{CONFIG_FILE}: model must be an object (a model spec)")
    try:
        local = LocalTrainingConfig.from_mapping(raw)
    except ValueError as exc:
        raise AgentError(f"{CONFIG_FILE}: {exc}") from None
    work_dir = default_work_dir
    if raw.get("work_dir") is not None:
        work_dir = Path(_string(raw, "work_dir"))
    local_data = parse_local_data(raw.get("local_data"), work_dir)
    return RoundConfig(
        raw=raw,
        algorithm=algorithm,
        model=model,
        local=local,
        shard=local_data.data_file() if local_data is not None else _resolve(work_dir, _string(raw, "shard")),
        state_dir=None if raw.get("state_dir") is None else _resolve(work_dir, _string(raw, "state_dir")),
        union=None if raw.get("union") is None else _resolve(work_dir, _string(raw, "union")),
        progress_every=_positive_int(raw, "progress_every", 1),
        max_update_bytes=_positive_int(raw, "max_update_bytes", DEFAULT_MAX_UPDATE_BYTES),
        max_shard_bytes=_positive_int(raw, "max_shard_bytes", DEFAULT_MAX_SHARD_BYTES),
        local_data=local_data,
    )


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _string(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise AgentError(f"{CONFIG_FILE}: {key} must be a non-empty string")
    return value


def _positive_int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AgentError(f"{CONFIG_FILE}: {key} must be a positive integer, got {value!r}")
    return value
