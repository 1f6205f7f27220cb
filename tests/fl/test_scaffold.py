"""SCAFFOLD option II (ALGORITHMS.md §3): the hand-computed client step, the server's x and c updates,
and c_i living in the client's state dir across rounds."""

from pathlib import Path

import pytest
import torch
from torch import nn

from training.fl.scaffold import (
    CI_FILE_NAME,
    CI_ROUND_CONFIG,
    LAST_ROUND_META,
    ClientControl,
    Scaffold,
    c_key,
    dc_key,
    load_client_control,
    save_client_control,
    scaffold_local_update,
)
from training.fl.strategy import ClientFailure, ClientUpdate

# Two single-sample batches for a 2-in, 1-out linear model with squared error.
BATCHES = [
    (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])),
    (torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0]])),
]
X = {"weight": torch.tensor([[1.0, -1.0]]), "bias": torch.tensor([0.5])}
C = {"weight": torch.tensor([[0.2, 0.0]]), "bias": torch.tensor([0.1])}
C_I = {"weight": torch.tensor([[0.0, 0.4]]), "bias": torch.tensor([-0.1])}
LR = 0.1


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def global_tensors(x=X, c=C) -> dict[str, torch.Tensor]:
    return {**x, **{c_key(p): t for p, t in c.items()}}


def test_client_step_matches_hand_computation():
    result = scaffold_local_update(linear(), global_tensors(), BATCHES, mse, LR, C_I)
    # Step 1: pred -0.5, g = ([-1, -2], -1); corrected by c - c_i = ([0.2, -0.4], 0.2)
    #         -> w = [1.08, -0.76], b = 0.58.
    # Step 2: pred -0.18, g = ([0, -2.36], -2.36) -> w = [1.06, -0.484], b = 0.796.
    assert result.steps == 2
    assert torch.allclose(result.upload["weight"], torch.tensor([[0.06, 0.516]]), atol=1e-6)
    assert torch.allclose(result.upload["bias"], torch.tensor([0.296]), atol=1e-6)
    # c_i+ = c_i - c + (x - y)/(K·lr) = c_i - c - Δy/0.2
    assert torch.allclose(result.c_i_new["weight"], torch.tensor([[-0.5, -2.18]]), atol=1e-5)
    assert torch.allclose(result.c_i_new["bias"], torch.tensor([-1.68]), atol=1e-5)
    assert torch.allclose(result.upload[dc_key("weight")], torch.tensor([[-0.5, -2.58]]), atol=1e-5)
    assert torch.allclose(result.upload[dc_key("bias")], torch.tensor([-1.58]), atol=1e-5)


def test_one_client_full_participation_reduces_to_the_client_step():
    strategy = Scaffold(num_clients=1)
    state = strategy.initial_state(X)
    state.buffers.update({c_key(p): t.clone() for p, t in C.items()})
    [plan] = strategy.configure(state, 1, ["solo"], {"lr": LR})
    result = scaffold_local_update(linear(), plan.tensors, BATCHES, mse, LR, C_I)
    new, metrics = strategy.aggregate(state, 1, [ClientUpdate("solo", 2, result.upload)], [])
    # x ← x + Δy = y and c ← c + Δc (|S| = N = 1).
    assert torch.allclose(new.weights["weight"], torch.tensor([[1.06, -0.484]]), atol=1e-6)
    assert torch.allclose(new.weights["bias"], torch.tensor([0.796]), atol=1e-6)
    assert torch.allclose(new.buffers[c_key("weight")], torch.tensor([[-0.3, -2.58]]), atol=1e-5)
    assert torch.allclose(new.buffers[c_key("bias")], torch.tensor([-1.48]), atol=1e-5)
    assert new.meta[LAST_ROUND_META] == {"solo": 1}
    # Twice FedAvg's 3 float32 values each way: x and c down, Δy and Δc up.
    assert metrics["upload_bytes"] == metrics["download_bytes"] == 2 * 3 * 4


def test_server_control_variate_update_divides_by_all_clients():
    strategy = Scaffold(num_clients=4, server_lr=0.5)
    state = strategy.initial_state({"w": torch.tensor([1.0, 1.0])})
    state.buffers[c_key("w")] = torch.tensor([0.5, -0.5])
    ups = [
        ClientUpdate("a", 5, {"w": torch.tensor([2.0, 0.0]), dc_key("w"): torch.tensor([1.0, 2.0])}),
        ClientUpdate("b", 50, {"w": torch.tensor([0.0, 4.0]), dc_key("w"): torch.tensor([3.0, 2.0])}),
    ]
    new, metrics = strategy.aggregate(state, 3, ups, [ClientFailure("c", "late", "late")])
    # x + η_g·mean(Δy) (unweighted) = [1, 1] + 0.5·[1, 2]; c + (2/4)·mean(Δc) = c + [4, 4]/4.
    assert torch.allclose(new.weights["w"], torch.tensor([1.5, 2.0]))
    assert torch.allclose(new.buffers[c_key("w")], torch.tensor([1.5, 0.5]))
    assert new.meta[LAST_ROUND_META] == {"a": 3, "b": 3}
    assert metrics["num_failed"] == 1
    assert torch.equal(state.buffers[c_key("w")], torch.tensor([0.5, -0.5]))  # old state untouched


def test_control_variates_stay_the_mean_of_client_variates():
    # Starting from c = c_i = 0 with N = 1, c must track c_i exactly round after round.
    strategy = Scaffold(num_clients=1)
    state = strategy.initial_state(X)
    c_i = {p: torch.zeros_like(t) for p, t in X.items()}
    for round_no in (1, 2, 3):
        [plan] = strategy.configure(state, round_no, ["solo"], {})
        result = scaffold_local_update(linear(), plan.tensors, BATCHES, mse, LR, c_i)
        state, _ = strategy.aggregate(state, round_no, [ClientUpdate("solo", 2, result.upload)], [])
        c_i = result.c_i_new
        for p in X:
            assert torch.allclose(state.buffers[c_key(p)], c_i[p], atol=1e-5)


def test_expected_upload_and_configure_payload():
    strategy = Scaffold(num_clients=3)
    state = strategy.initial_state(X)
    state.meta[LAST_ROUND_META] = {"a": 2}
    assert strategy.expected_upload(state.weights) == {
        "weight": ((1, 2), torch.float32),
        "bias": ((1,), torch.float32),
        dc_key("weight"): ((1, 2), torch.float32),
        dc_key("bias"): ((1,), torch.float32),
    }
    base = {"lr": 0.1, "client_state_dir": "/w/{client_id}/job-1"}
    plans = strategy.configure(state, 5, ["a", "b/c"], base)
    assert set(plans[0].tensors) == {"weight", "bias", c_key("weight"), c_key("bias")}
    assert [p.config[CI_ROUND_CONFIG] for p in plans] == [2, None]
    assert [p.config["client_state_dir"] for p in plans] == ["/w/a/job-1", "/w/b_c/job-1"]


def test_ci_persists_across_rounds_and_survives_a_lost_upload(tmp_path: Path):
    ref = {p: t for p, t in X.items()}
    first = load_client_control(tmp_path, ref, None)
    assert first.reset is False and all(torch.equal(t, torch.zeros_like(t)) for t in first.c_i.values())
    round1 = scaffold_local_update(linear(), global_tensors(), BATCHES, mse, LR, first.c_i)
    save_client_control(tmp_path, first, round1.c_i_new, 1)

    # Round 1 was aggregated: the phone continues from its c_i+.
    second = load_client_control(tmp_path, ref, 1)
    assert second.reset is False and second.base_round == 1
    for p in X:
        assert torch.equal(second.c_i[p], round1.c_i_new[p])

    # Round 4's upload is lost (server still says 1): the phone falls back to the round-1 c_i.
    round4 = scaffold_local_update(linear(), global_tensors(), BATCHES, mse, LR, second.c_i)
    save_client_control(tmp_path, second, round4.c_i_new, 4)
    assert load_client_control(tmp_path, ref, 4).base_round == 4
    fallback = load_client_control(tmp_path, ref, 1)
    assert fallback.reset is False and fallback.base_round == 1
    assert torch.equal(fallback.c_i["weight"], round1.c_i_new["weight"])


def test_ci_resets_when_deleted_corrupt_or_mismatched(tmp_path: Path):
    ref = {p: t for p, t in X.items()}
    save_client_control(tmp_path, ClientControl({}, None, False), C_I, 2)
    assert load_client_control(tmp_path, ref, 2).reset is False

    (tmp_path / CI_FILE_NAME).unlink()
    wiped = load_client_control(tmp_path, ref, 2)
    assert wiped.reset is True and torch.equal(wiped.c_i["weight"], torch.zeros(1, 2))

    (tmp_path / CI_FILE_NAME).write_bytes(b"\x00garbage, not safetensors")
    assert load_client_control(tmp_path, ref, 2).reset is True

    save_client_control(tmp_path, ClientControl({}, None, False), {"weight": torch.zeros(3, 3)}, 2)
    assert load_client_control(tmp_path, ref, 2).reset is True  # another model's c_i

    save_client_control(tmp_path, ClientControl({}, None, False), C_I, 7)
    assert load_client_control(tmp_path, ref, 2).reset is True  # neither slot is the aggregated round


def test_untracked_mode_uses_the_newest_slot(tmp_path: Path):
    ref = {p: t for p, t in X.items()}
    assert load_client_control(tmp_path, ref, None, tracked=False).reset is False  # fresh phone
    save_client_control(tmp_path, ClientControl(C, 1, False), C_I, 2)
    newest = load_client_control(tmp_path, ref, None, tracked=False)
    assert newest.base_round == 2 and torch.equal(newest.c_i["bias"], C_I["bias"])


def test_no_local_steps_leaves_everything_unchanged():
    result = scaffold_local_update(linear(), global_tensors(), [], mse, LR, C_I)
    assert result.steps == 0
    assert all(torch.equal(t, torch.zeros_like(t)) for t in result.upload.values())
    assert torch.equal(result.c_i_new["weight"], C_I["weight"])


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        Scaffold(num_clients=0)
    with pytest.raises(ValueError):
        scaffold_local_update(linear(), global_tensors(), BATCHES, mse, 0.0, C_I)
