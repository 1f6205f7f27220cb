"""Where a job's files live on the server, and on the phone.

Server, under FEDFLEET_DATA_DIR/jobs/<job>/:
    shards/client-<i>.safetensors            each phone's data shard (pushed once per job)
    checkpoints/round-<n>.safetensors        global weights (`w.<name>`) + strategy buffers (`b.<name>`)
    checkpoints/round-<n>.json               strategy meta (JSON) and the round's metrics
    rounds/<n>.<attempt>/<device>/           what was pushed (global.safetensors, config.json) and what
                                             was pulled (update.safetensors, result.json)
    model-round-<n>.safetensors              the global model alone, for export
    analysis/influence.safetensors           the client-influence tracker's state (training/analysis/)
Phone, under the device's work dir (default /data/local/tmp/fedfleet/):
    agent.pyz, jobs/<job>/shard.safetensors, jobs/<job>/state/ (client state, e.g. SCAFFOLD's c_i),
    jobs/<job>/round-<n>.<attempt>/ (deleted after the round)

Checkpoints are safetensors (no code execution on load) written to a temp file and renamed, so a worker
killed mid-write never leaves a half checkpoint that a resumed job would trust.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

from django.conf import settings
from safetensors.torch import load_file

from training.fl.strategy import ServerState
from training.fl.wire import save_tensors, write_bytes_atomic

WEIGHT_PREFIX = "w."
BUFFER_PREFIX = "b."


def data_dir() -> Path:
    return Path(settings.FEDFLEET_DATA_DIR)


def job_dir(job_id: int) -> Path:
    return data_dir() / "jobs" / str(int(job_id))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (what a phone's `sha256sum` prints for its copy)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def union_path(job_id: int) -> Path:
    """A submodel job's union of ids U (`<table>.union`), fixed once the job is prepared."""
    return job_dir(job_id) / "union.safetensors"


def shard_path(job_id: int, client_index: int) -> Path:
    return job_dir(job_id) / "shards" / f"client-{int(client_index)}.safetensors"


def checkpoint_path(job_id: int, round_no: int) -> Path:
    return job_dir(job_id) / "checkpoints" / f"round-{int(round_no)}.safetensors"


def model_export_path(job_id: int, round_no: int) -> Path:
    return job_dir(job_id) / f"model-round-{int(round_no)}.safetensors"


def client_round_dir(job_id: int, round_no: int, attempt: int, device_id: int) -> Path:
    return job_dir(job_id) / "rounds" / f"{int(round_no)}.{int(attempt)}" / str(int(device_id))


def analysis_dir(job_id: int) -> Path:
    """Server-side analyses of the job (client influence): files only the training queue writes."""
    return job_dir(job_id) / "analysis"


def influence_state_path(job_id: int) -> Path:
    """The Fed-Influence tracker's state (ε per client, records, costs): safetensors + JSON metadata."""
    return analysis_dir(job_id) / "influence.safetensors"


def save_checkpoint(job_id: int, round_no: int, state: ServerState, info: dict[str, Any]) -> None:
    tensors = {WEIGHT_PREFIX + k: v for k, v in state.weights.items()}
    tensors.update({BUFFER_PREFIX + k: v for k, v in state.buffers.items()})
    path = checkpoint_path(job_id, round_no)
    # JSON first: a checkpoint counts only once its tensors exist, and they are renamed into place last.
    write_bytes_atomic(path.with_suffix(".json"), json.dumps({"meta": state.meta, "info": info}).encode())
    save_tensors(path, tensors)
    save_tensors(model_export_path(job_id, round_no), state.weights, {"round": str(round_no)})


def load_checkpoint(job_id: int, round_no: int) -> ServerState:
    path = checkpoint_path(job_id, round_no)
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())["meta"]
    weights = {k[len(WEIGHT_PREFIX) :]: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIX)}
    buffers = {k[len(BUFFER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BUFFER_PREFIX)}
    return ServerState(weights=weights, buffers=buffers, meta=meta)


# ---- paths on the phone (POSIX, built from validated pieces; always quoted when put into a command) ----


def phone_agent_path(work_dir: str) -> str:
    return posixpath.join(work_dir, "agent.pyz")


def relative_job_dir(job_id: int) -> str:
    return posixpath.join("jobs", str(int(job_id)))


# config.json names the shard and the state dir relative to the work dir (the agent resolves them
# against the directory holding agent.pyz), so the config holds no absolute phone paths.
def relative_shard_path(job_id: int) -> str:
    return posixpath.join(relative_job_dir(job_id), "shard.safetensors")


def relative_state_dir(job_id: int) -> str:
    return posixpath.join(relative_job_dir(job_id), "state")


def phone_job_dir(work_dir: str, job_id: int) -> str:
    return posixpath.join(work_dir, relative_job_dir(job_id))


def phone_shard_path(work_dir: str, job_id: int) -> str:
    return posixpath.join(work_dir, relative_shard_path(job_id))


def phone_state_dir(work_dir: str, job_id: int) -> str:
    return posixpath.join(work_dir, relative_state_dir(job_id))


def relative_union_path(job_id: int) -> str:
    return posixpath.join(relative_job_dir(job_id), "union.safetensors")


def phone_union_path(work_dir: str, job_id: int) -> str:
    return posixpath.join(work_dir, relative_union_path(job_id))


def phone_rounds_dir(work_dir: str, job_id: int) -> str:
    """Where a job's round dirs live on a phone; each round clears it first (engine/runtimes)."""
    return posixpath.join(phone_job_dir(work_dir, job_id), "rounds")


def phone_round_dir(work_dir: str, job_id: int, round_no: int, attempt: int) -> str:
    return posixpath.join(phone_rounds_dir(work_dir, job_id), f"round-{int(round_no)}.{int(attempt)}")


def onnx_export_path(job_id: int, round_no: int) -> Path:
    """The final model as ONNX (checked in onnxruntime), beside model-round-<n>.safetensors; its check's
    figures in the .json next to it."""
    return job_dir(job_id) / f"model-round-{int(round_no)}.onnx"
