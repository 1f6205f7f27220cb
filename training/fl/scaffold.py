"""SCAFFOLD, option II (Karimireddy et al., ICML 2020), ALGORITHMS.md §3.

Non-IID data makes each phone's local steps drift toward its own optimum. SCAFFOLD corrects every local
step with control variates: the server's c (an estimate of the global gradient) and the phone's c_i (an
estimate of its own), so the local step follows g_i(y) − c_i + c ≈ the global gradient direction.

Server (this strategy)
- configure: each selected phone receives the global weights x, the control variate c as tensors
  `scaffold.c.<param>`, and a config with the local-training settings plus, per phone, the round its
  last update was aggregated (`scaffold_ci_round`, None if never) — see "c_i on the phone" below.
- aggregate: x ← x + η_g·mean(Δy);  c ← c + (|S|/N)·mean(Δc) = c + Σ Δc / N, with N = every phone in the
  job (`num_clients`). Means are unweighted, as in the paper.

Client (`scaffold_client_train`, run by the agent on the phone)
- y ← x; K local SGD steps y ← y − η_l·(g_i(y) − c_i + c), K = the steps actually run;
  c_i⁺ = c_i − c + (x − y)/(K·η_l);  uploads Δy under the parameter names and Δc = c_i⁺ − c_i under
  `scaffold.dc.<param>` — twice FedAvg's upload (and download: x and c).

c_i on the phone
c_i lives in `<client_state_dir>/scaffold_ci.safetensors` on the phone between rounds; it goes nowhere
else. A phone's upload can be lost after it has trained (dropped connection, late), in which case the
server never folds its Δc into c. So the file keeps two slots: the *committed* c_i and the *pending* c_i⁺
with the round that produced it. The server tells the phone which of its rounds was last aggregated and
the phone keeps the matching slot; the invariant c = (1/N)·Σ c_i then survives dropped uploads. A phone
whose file is missing, corrupt, from another model, or matches neither round (wiped phone, reinstalled
agent) starts again from c_i = 0 and reports `scaffold_ci_reset: 1`; the server counts those in its
metrics so the platform can note them. (The lost c_i remains folded into c — nothing can recover it.)

File format: safetensors, tensors `committed.<param>` and `pending.<param>`, metadata `committed_round`
and `pending_round` (a round number or "none"); written atomically (temp file + rename).

State keys: buffers `scaffold.c.<param>`; meta `scaffold.last_round` = {client_id: round aggregated}.
Config keys the client reads: `lr` (η_l), `batch_size`, `epochs` or `local_steps` (a fixed budget K; K
actually run is what the control update divides by), `seed`, `round`, `scaffold_ci_round` (set by
`configure`), and `client_state_dir` (the engine's per-job state dir on the phone; `{client_id}` in it is
expanded by `configure` for simulations that run every client in one process). The agent's `ClientTask.state_dir`
(its config `state_dir`, resolved against the work dir) takes precedence when set.
Only floating-point entries of the weights get control variates; integer buffers keep the server's value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from training.fl.client import (
    ClientTask,
    LocalTrainingResult,
    global_weights_for,
    model_for,
    train_locally,
)
from training.fl.fedlaavg import budget_met, step_budget_config
from training.fl.strategy import (
    ClientFailure,
    ClientInstructions,
    ClientUpdate,
    ServerState,
    Strategy,
    Weights,
    round_counts,
)
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors_with_metadata, save_tensors

C_PREFIX = "scaffold.c."
DC_PREFIX = "scaffold.dc."
LAST_ROUND_META = "scaffold.last_round"
CI_ROUND_CONFIG = "scaffold_ci_round"
CI_RESET_METRIC = "scaffold_ci_reset"
CLIENT_ID_PLACEHOLDER = "{client_id}"
CI_FILE_NAME = "scaffold_ci.safetensors"
_COMMITTED = "committed."
_PENDING = "pending."
_NO_ROUND = "none"


def c_key(param: str) -> str:
    return f"{C_PREFIX}{param}"


def dc_key(param: str) -> str:
    return f"{DC_PREFIX}{param}"


def controlled_params(weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Entries that get a control variate (floating point), in a stable order."""
    return sorted(k for k, v in weights.items() if v.is_floating_point() and not k.startswith("scaffold."))


def per_client_state_dir(template: str, client_id: str) -> str:
    """Expand `{client_id}` in a state-dir template. On phones the dir is per job and the phone's own work
    dir keeps phones apart; a simulation running every client in one process needs one dir per client."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", client_id)
    return template.replace(CLIENT_ID_PLACEHOLDER, safe_id)


class Scaffold(Strategy):
    """SCAFFOLD option II. `num_clients` is N (every phone in the job); `server_lr` is η_g."""

    name = "scaffold"

    def __init__(self, num_clients: int, server_lr: float = 1.0) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.num_clients = num_clients
        self.server_lr = float(server_lr)

    def initial_state(self, weights: Weights) -> ServerState:
        state = super().initial_state(weights)
        for p in controlled_params(state.weights):
            state.buffers[c_key(p)] = torch.zeros_like(state.weights[p])
        state.meta[LAST_ROUND_META] = {}
        return state

    def configure(
        self, state: ServerState, round_no: int, client_ids: Sequence[str], base_config: Mapping[str, Any]
    ) -> list[ClientInstructions]:
        tensors = configure_payload(state)
        last_round: Mapping[str, int] = state.meta.get(LAST_ROUND_META, {})
        plans = []
        for cid in client_ids:
            config = {**base_config, "algorithm": self.name, "round": round_no}
            config[CI_ROUND_CONFIG] = last_round.get(cid)
            if isinstance(config.get("client_state_dir"), str):
                config["client_state_dir"] = per_client_state_dir(config["client_state_dir"], cid)
            plans.append(ClientInstructions(client_id=cid, tensors=dict(tensors), config=config))
        return plans

    def aggregate(
        self,
        state: ServerState,
        round_no: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[ClientFailure],
    ) -> tuple[ServerState, dict[str, float]]:
        params = controlled_params(state.weights)
        metrics = {
            **round_counts(round_no, updates, failures),
            "scaffold_ci_resets": float(sum(u.metrics.get(CI_RESET_METRIC, 0.0) > 0 for u in updates)),
        }
        if not updates:
            return state, {**metrics, "delta_norm": 0.0, "c_norm": _global_norm(state.buffers.values())}

        weights = dict(state.weights)
        buffers = dict(state.buffers)
        mean_dy = {p: _stack(updates, p).mean(0) for p in params}
        sum_dc = {p: _stack(updates, dc_key(p)).sum(0) for p in params}
        for p in params:
            weights[p] = state.weights[p] + self.server_lr * mean_dy[p].to(state.weights[p].dtype)
            # (|S|/N)·mean(Δc) is Σ Δc / N: each reporting phone's c_i moved by Δc, and c is their mean.
            buffers[c_key(p)] = state.buffers[c_key(p)] + sum_dc[p] / self.num_clients

        last_round = {
            **state.meta.get(LAST_ROUND_META, {}),
            **dict.fromkeys((u.client_id for u in updates), round_no),
        }
        meta = {**state.meta, LAST_ROUND_META: last_round}
        metrics["delta_norm"] = _global_norm(mean_dy.values())
        # Traffic: every selected phone downloaded x and c; every reporter uploaded Δy and Δc.
        selected = len(updates) + len(failures)
        metrics["download_bytes"] = float(selected * tensor_bytes(configure_payload(state)))
        metrics["upload_bytes"] = float(sum(tensor_bytes(u.tensors) for u in updates))
        metrics["c_norm"] = _global_norm(buffers[c_key(p)] for p in params)
        return ServerState(weights=weights, buffers=buffers, meta=meta), metrics

    def expected_upload(self, weights: Weights) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        expected = super().expected_upload(weights)
        for p in controlled_params(weights):
            expected[dc_key(p)] = (tuple(weights[p].shape), weights[p].dtype)
        return expected


def configure_payload(state: ServerState) -> Weights:
    """The tensors one selected phone downloads: x and c."""
    tensors: Weights = dict(state.weights)
    for p in controlled_params(state.weights):
        tensors[c_key(p)] = state.buffers[c_key(p)]
    return tensors


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor payload in bytes (the safetensors file adds a small JSON header on top)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _stack(updates: Sequence[ClientUpdate], key: str) -> torch.Tensor:
    return torch.stack([u.tensors[key].to(torch.float32) for u in updates])


def _global_norm(tensors: Iterable[torch.Tensor]) -> float:
    return float(sum(float((t.double() ** 2).sum()) for t in tensors) ** 0.5)


# ---------------------------------------------------------------------------------------------------
# Client side: runs on the phone (inside agent.pyz) through client.CLIENT_ALGORITHMS["scaffold"].
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaffoldTrainingResult(LocalTrainingResult):
    """A local-training result that also says whether this phone's c_i had to be reset to zero."""

    ci_reset: bool = False

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), CI_RESET_METRIC: 1.0 if self.ci_reset else 0.0}


@dataclass(frozen=True)
class ClientControl:
    """The c_i a phone starts a round from, and whether it had to be reset to zero."""

    c_i: Weights
    base_round: int | None  # the round that produced this c_i (None = the initial zero)
    reset: bool


def control_file(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / CI_FILE_NAME


def load_client_control(
    state_dir: str | os.PathLike[str],
    reference: Mapping[str, torch.Tensor],
    aggregated_round: int | None,
    *,
    tracked: bool = True,
) -> ClientControl:
    """Read this phone's c_i for the parameters in `reference` (names, shapes).

    `aggregated_round` is the server's record of this phone's last aggregated round (`scaffold_ci_round`
    in the config); the slot produced in that round is the c_i the server's c accounts for. None means
    the server has never aggregated this phone: it starts from zero, which is not a reset. With
    `tracked=False` (a config without that key, e.g. a bare simulation) the newest slot is used and only
    an unreadable file counts as a reset."""
    zeros = {p: torch.zeros_like(t, dtype=torch.float32) for p, t in reference.items()}
    if tracked and aggregated_round is None:
        return ClientControl(zeros, None, reset=False)
    path = control_file(state_dir)
    if not path.exists():
        return ClientControl(zeros, None, reset=tracked)
    slots = _read_slots(path, reference)
    if slots is None:
        return ClientControl(zeros, None, reset=True)
    if not tracked:
        newest = max(slots, key=lambda r: -1 if r is None else r)
        return ClientControl(slots[newest], newest, reset=False)
    if aggregated_round in slots:
        return ClientControl(slots[aggregated_round], aggregated_round, reset=False)
    return ClientControl(zeros, None, reset=True)


def save_client_control(
    state_dir: str | os.PathLike[str],
    committed: ClientControl,
    pending: Weights,
    pending_round: int | None,
) -> Path:
    """Write the c_i the round started from (committed) and the new c_i⁺ (pending) atomically, so a phone
    that dies mid-write keeps its old file rather than a torn one."""
    path = control_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if committed.base_round is not None:
        tensors.update({_COMMITTED + p: t.contiguous() for p, t in committed.c_i.items()})
    tensors.update({_PENDING + p: t.detach().to(torch.float32).contiguous() for p, t in pending.items()})
    metadata = {
        "committed_round": _round_text(committed.base_round),
        "pending_round": _round_text(pending_round),
    }
    save_tensors(path, tensors, metadata)  # temp file + rename
    return path


def _read_slots(path: Path, reference: Mapping[str, torch.Tensor]) -> dict[int | None, Weights] | None:
    """{round: c_i} for every well-formed slot in the file; None if the file cannot be used at all."""
    try:
        # two slots of c_i, each the model's size
        tensors, metadata = load_tensors_with_metadata(path, max_bytes=2 * DEFAULT_MAX_UPDATE_BYTES)
    except Exception:  # any unreadable file (truncated, not safetensors, ...) means a reset
        return None
    slots: dict[int | None, Weights] = {}
    for prefix, meta_key in ((_COMMITTED, "committed_round"), (_PENDING, "pending_round")):
        slot = {p: tensors.get(prefix + p) for p in reference}
        if any(t is None for t in slot.values()):
            continue
        try:
            slot_round = _parse_round(metadata.get(meta_key, ""))
        except ValueError:
            return None
        checked = {p: t for p, t in slot.items() if t is not None}
        if all(_matches(checked[p], reference[p]) for p in reference):
            slots[slot_round] = {p: t.to(torch.float32) for p, t in checked.items()}
    return slots or None


def _matches(tensor: torch.Tensor, reference: torch.Tensor) -> bool:
    return (
        tuple(tensor.shape) == tuple(reference.shape)
        and tensor.is_floating_point()
        and bool(torch.isfinite(tensor).all())
    )


def _round_text(round_no: int | None) -> str:
    return _NO_ROUND if round_no is None else str(int(round_no))


def _parse_round(text: str) -> int | None:
    if text == _NO_ROUND:
        return None
    return int(text)


def option_ii_control(
    c_i: Mapping[str, torch.Tensor],
    c: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    steps: int,
    lr: float,
) -> Weights:
    """c_i⁺ = c_i − c + (x − y)/(K·η_l) = c_i − c − Δy/(K·η_l), for the names in `c_i`. With no step run
    nothing was learnt, so c_i is kept."""
    if steps <= 0:
        return {p: t.clone() for p, t in c_i.items()}
    return {p: c_i[p] - c[p] - delta[p] / (steps * lr) for p in c_i}


def client_state_dir(task: ClientTask) -> Path:
    """Where this phone keeps c_i for this job: the task's state dir (the agent resolves config
    `state_dir` against the phone's work dir), else the config's `client_state_dir` as given."""
    if task.state_dir is not None:
        return task.state_dir
    configured = task.config.get("client_state_dir")
    if isinstance(configured, str) and configured:
        return Path(configured)
    raise ValueError("SCAFFOLD needs a client state dir (config client_state_dir) to keep c_i between rounds")


def scaffold_client_train(task: ClientTask) -> ScaffoldTrainingResult:
    """One SCAFFOLD round on the phone: read c_i, run K corrected SGD steps from x, write c_i⁺, and
    upload Δy plus Δc (`scaffold.dc.<param>`).

    Control variates exist for the model's trainable parameters; any other float state_dict entry would
    travel as a plain delta with Δc = 0 (the lab's models have none)."""
    model = model_for(task)
    weights = global_weights_for(model, task.received)
    trainable = [name for name, _ in model.named_parameters()]
    missing = [c_key(p) for p in trainable if c_key(p) not in task.received]
    if missing:
        raise ValueError(f"SCAFFOLD round without the server control variate: {', '.join(missing)}")
    c = {p: task.received[c_key(p)].to(torch.float32) for p in trainable}
    config = step_budget_config(task.config, len(task.y))

    state_dir = client_state_dir(task)
    aggregated_round = _optional_round(task.config, CI_ROUND_CONFIG)
    control = load_client_control(state_dir, c, aggregated_round, tracked=CI_ROUND_CONFIG in task.config)

    correction = {p: c[p] - control.c_i[p] for p in trainable}
    result = train_locally(
        model,
        task.x,
        task.y,
        config,
        weights,
        progress=task.progress,
        gradient_correction=correction,
        clock=task.clock,
    )
    c_i_new = option_ii_control(control.c_i, c, result.delta, result.steps, config.lr)
    extra = {dc_key(p): c_i_new[p] - control.c_i[p] for p in trainable}
    for p in controlled_params(weights):
        extra.setdefault(dc_key(p), torch.zeros_like(weights[p], dtype=torch.float32))

    save_client_control(state_dir, control, c_i_new, _optional_round(task.config, "round"))
    result = budget_met(result, task.config)
    return ScaffoldTrainingResult(**_fields(result), extra=extra, ci_reset=control.reset)


def _optional_round(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config {key} must be an integer or null, got {value!r}")
    return value


def _fields(result: LocalTrainingResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name != "extra"}
