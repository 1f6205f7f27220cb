"""SCAFFOLD option II (ALGORITHMS.md §3): a client round checked against an independent hand-written
step, the server's x and c updates, and c_i living in the client's state dir across rounds."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.fl.client import ClientTask, client_train
from training.fl.evaluate import evaluate, mean_loss
from training.fl.nets import build_model_from_spec, initial_weights, set_weights
from training.fl.registry import JobContext, make_strategy
from training.fl.scaffold import (
    CI_FILE_NAME,
    CI_RESET_METRIC,
    CI_ROUND_CONFIG,
    LAST_ROUND_META,
    ClientControl,
    Scaffold,
    c_key,
    dc_key,
    load_client_control,
    save_client_control,
    scaffold_client_train,
)
from training.fl.simulate import SimulationConfig, simulate
from training.fl.strategy import ClientFailure, ClientUpdate, ServerState

SPEC = {"name": "logreg", "input_shape": [2], "num_classes": 2}
W, B = "linear.weight", "linear.bias"
X0 = {W: torch.tensor([[1.0, -1.0], [0.5, 0.0]]), B: torch.tensor([0.5, -0.5])}
C = {W: torch.tensor([[0.2, 0.0], [0.0, -0.1]]), B: torch.tensor([0.1, 0.0])}
C_I = {W: torch.tensor([[0.0, 0.4], [0.3, 0.0]]), B: torch.tensor([-0.1, 0.2])}
FEATURES = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
LABELS = torch.tensor([0, 1])
LR, STEPS = 0.1, 2
ROUND_CONFIG = {"algorithm": "scaffold", "model": SPEC, "lr": LR, "batch_size": 2, "local_steps": STEPS}


def hand_steps(x: dict[str, torch.Tensor], correction: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Full-batch softmax regression steps w ← w − lr·(∇CE(w) + correction), written out in numpy."""
    w, b = x[W].double().numpy().copy(), x[B].double().numpy().copy()
    feats, onehot = FEATURES.double().numpy(), np.eye(2)[LABELS.numpy()]
    for _ in range(STEPS):
        logits = feats @ w.T + b
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        err = (probs - onehot) / len(feats)
        w = w - LR * (err.T @ feats + correction[W].double().numpy())
        b = b - LR * (err.sum(0) + correction[B].double().numpy())
    return {W: w, B: b}


def received(x=X0, c=C) -> dict[str, torch.Tensor]:
    return {**x, **{c_key(p): t for p, t in c.items()}}


def run_client(config: dict, tensors: dict[str, torch.Tensor], state_dir: Path):
    task = ClientTask(
        config={**config, "client_state_dir": str(state_dir)}, received=tensors, x=FEATURES, y=LABELS
    )
    return scaffold_client_train(task)


def seed_ci(state_dir: Path, c_i: dict[str, torch.Tensor], round_no: int) -> None:
    save_client_control(state_dir, ClientControl({}, None, False), c_i, round_no)


def test_client_round_matches_hand_computed_steps(tmp_path: Path):
    seed_ci(tmp_path, C_I, 3)
    result = run_client({**ROUND_CONFIG, "round": 4, CI_ROUND_CONFIG: 3}, received(), tmp_path)
    expected_y = hand_steps(X0, {p: C[p] - C_I[p] for p in X0})
    assert result.steps == STEPS and result.completed
    for p in X0:
        dy = expected_y[p] - X0[p].double().numpy()
        assert np.allclose(result.delta[p].numpy(), dy, atol=1e-6)
        c_i_new = C_I[p].double().numpy() - C[p].double().numpy() - dy / (STEPS * LR)  # option II
        assert np.allclose(result.extra[dc_key(p)].numpy(), c_i_new - C_I[p].double().numpy(), atol=1e-5)
    assert result.metrics()[CI_RESET_METRIC] == 0.0
    assert set(result.upload()) == {W, B, dc_key(W), dc_key(B)}


def test_one_client_full_participation_reduces_to_the_client_step(tmp_path: Path):
    strategy = Scaffold(num_clients=1)
    state = strategy.initial_state(X0)
    state.buffers.update({c_key(p): t.clone() for p, t in C.items()})
    state.meta[LAST_ROUND_META] = {"solo": 3}
    seed_ci(tmp_path, C_I, 3)
    [plan] = strategy.configure(
        state, 4, ["solo"], {k: v for k, v in ROUND_CONFIG.items() if k != "algorithm"}
    )
    assert plan.config[CI_ROUND_CONFIG] == 3 and plan.config["algorithm"] == "scaffold"
    result = run_client(plan.config, plan.tensors, tmp_path)
    new, metrics = strategy.aggregate(
        state, 4, [ClientUpdate("solo", 2, result.upload(), result.metrics())], []
    )
    # N = |S| = 1, η_g = 1: x ← y (the client's trained model) and c ← c + Δc = c_i⁺ + (c − c_i).
    expected_y = hand_steps(X0, {p: C[p] - C_I[p] for p in X0})
    for p in X0:
        assert np.allclose(new.weights[p].numpy(), expected_y[p], atol=1e-6)
        assert torch.allclose(new.buffers[c_key(p)], C[p] + result.extra[dc_key(p)])
    assert new.meta[LAST_ROUND_META] == {"solo": 4}
    # Twice FedAvg's traffic: 6 float32 values of x (+ 6 of c) down, Δy (+ Δc) up.
    assert metrics["upload_bytes"] == metrics["download_bytes"] == 2 * 6 * 4


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


def test_ci_persists_on_the_client_and_resets_cleanly_when_deleted(tmp_path: Path):
    # N = 1 and c = c_i = 0 at the start, so c must equal the phone's stored c_i after every round.
    strategy = Scaffold(num_clients=1)
    state = strategy.initial_state(X0)
    base = {k: v for k, v in ROUND_CONFIG.items() if k != "algorithm"}

    def play(state: ServerState, round_no: int) -> tuple[ServerState, dict[str, float], dict[str, float]]:
        [plan] = strategy.configure(state, round_no, ["solo"], base)
        result = run_client(plan.config, plan.tensors, tmp_path)
        update = ClientUpdate("solo", 2, result.upload(), result.metrics())
        new, server_metrics = strategy.aggregate(state, round_no, [update], [])
        return new, result.metrics(), server_metrics

    for round_no in (1, 2):
        state, client_metrics, server_metrics = play(state, round_no)
        assert client_metrics[CI_RESET_METRIC] == 0.0 and server_metrics["scaffold_ci_resets"] == 0
        stored = load_client_control(tmp_path, X0, round_no)
        assert stored.base_round == round_no and not stored.reset
        for p in X0:
            assert torch.allclose(state.buffers[c_key(p)], stored.c_i[p], atol=1e-6)
        assert not all(torch.equal(t, torch.zeros_like(t)) for t in stored.c_i.values())

    (tmp_path / CI_FILE_NAME).unlink()  # the phone was wiped
    state, client_metrics, server_metrics = play(state, 3)
    assert client_metrics[CI_RESET_METRIC] == 1.0
    assert server_metrics["scaffold_ci_resets"] == 1
    assert load_client_control(tmp_path, X0, 3).base_round == 3  # a fresh file from round 3 on


def test_lost_upload_falls_back_to_the_aggregated_ci(tmp_path: Path):
    seed_ci(tmp_path, C_I, 1)
    run_client({**ROUND_CONFIG, "round": 2, CI_ROUND_CONFIG: 1}, received(), tmp_path)
    # Round 2's upload never reached the server: it still says 1, so the phone uses the round-1 c_i.
    fallback = load_client_control(tmp_path, X0, 1)
    assert fallback.base_round == 1 and not fallback.reset
    assert torch.equal(fallback.c_i[W], C_I[W])
    assert load_client_control(tmp_path, X0, 2).base_round == 2


def test_ci_file_problems_mean_reset(tmp_path: Path):
    seed_ci(tmp_path, C_I, 2)
    assert load_client_control(tmp_path, X0, 2).reset is False
    (tmp_path / CI_FILE_NAME).write_bytes(b"\x00garbage, not safetensors")
    corrupt = load_client_control(tmp_path, X0, 2)
    assert corrupt.reset is True and torch.equal(corrupt.c_i[W], torch.zeros(2, 2))
    seed_ci(tmp_path, {W: torch.zeros(3, 3), B: torch.zeros(2)}, 2)
    assert load_client_control(tmp_path, X0, 2).reset is True  # another model's c_i
    seed_ci(tmp_path, {W: torch.full((2, 2), float("nan")), B: torch.zeros(2)}, 2)
    assert load_client_control(tmp_path, X0, 2).reset is True  # non-finite
    seed_ci(tmp_path, C_I, 7)
    assert load_client_control(tmp_path, X0, 2).reset is True  # neither slot is the aggregated round
    # A phone the server never aggregated starts from zero without a reset, whatever is on disk.
    fresh = load_client_control(tmp_path, X0, None)
    assert fresh.reset is False and torch.equal(fresh.c_i[B], torch.zeros(2))


def test_untracked_config_uses_the_newest_slot(tmp_path: Path):
    assert load_client_control(tmp_path, X0, None, tracked=False).reset is False  # fresh phone
    save_client_control(tmp_path, ClientControl(C, 1, False), C_I, 2)
    newest = load_client_control(tmp_path, X0, None, tracked=False)
    assert newest.base_round == 2 and torch.equal(newest.c_i[B], C_I[B])


def test_expected_upload_and_configure_payload():
    strategy = Scaffold(num_clients=3)
    state = strategy.initial_state(X0)
    state.meta[LAST_ROUND_META] = {"a": 2}
    assert strategy.expected_upload(state.weights) == {
        W: ((2, 2), torch.float32),
        B: ((2,), torch.float32),
        dc_key(W): ((2, 2), torch.float32),
        dc_key(B): ((2,), torch.float32),
    }
    base = {"lr": 0.1, "client_state_dir": "/w/{client_id}/job-1"}
    plans = strategy.configure(state, 5, ["a", "b/c"], base)
    assert set(plans[0].tensors) == {W, B, c_key(W), c_key(B)}
    assert [p.config[CI_ROUND_CONFIG] for p in plans] == [2, None]
    assert [p.config["client_state_dir"] for p in plans] == ["/w/a/job-1", "/w/b_c/job-1"]


def test_client_refuses_a_round_without_state_dir_or_control_variate():
    task = ClientTask(config=ROUND_CONFIG, received=received(), x=FEATURES, y=LABELS)
    with pytest.raises(ValueError, match="state dir"):
        scaffold_client_train(task)
    with pytest.raises(ValueError, match="control variate"):
        scaffold_client_train(
            ClientTask(config=ROUND_CONFIG, received=X0, x=FEATURES, y=LABELS, state_dir=Path("/x"))
        )
    with pytest.raises(ValueError):
        Scaffold(num_clients=0)


def blobs(num_clients: int = 4, per_client: int = 30) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Label-skewed shards: client k holds mostly class k of four well-separated 2-D blobs."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    shards = []
    for k in range(num_clients):
        labels = torch.full((per_client,), k)
        labels[: per_client // 5] = torch.randint(0, 4, (per_client // 5,), generator=gen)
        shards.append((centres[labels] + 0.8 * torch.randn(per_client, 2, generator=gen), labels))
    return shards


def test_scaffold_on_a_non_iid_problem_trains_without_diverging(tmp_path: Path):
    shards = blobs()
    spec = {"name": "logreg", "input_shape": [2], "num_classes": 4}
    start = initial_weights(spec, seed=0)
    strategy = make_strategy("scaffold", {}, JobContext(num_clients=4, lr=0.1))
    state = strategy.initial_state(start)
    base = {
        "model": spec,
        "lr": 0.1,
        "batch_size": 10,
        "local_steps": 5,
        "client_state_dir": str(tmp_path / "{client_id}"),
    }
    all_x, all_y = torch.cat([x for x, _ in shards]), torch.cat([y for _, y in shards])
    model = build_model_from_spec(spec)

    def global_eval(weights) -> tuple[float, float]:
        set_weights(model, weights)
        return mean_loss(model, all_x, all_y), evaluate(model, all_x, all_y).accuracy

    loss_start, _ = global_eval(state.weights)
    ids = ["p0", "p1", "p2", "p3"]
    for round_no in range(1, 16):
        chosen = ids if round_no % 2 else ids[:2]  # partial participation on even rounds
        updates = []
        for plan in strategy.configure(state, round_no, chosen, base):
            x, y = shards[ids.index(plan.client_id)]
            config = {**plan.config, "round": round_no, "seed": round_no}
            result = client_train(ClientTask(config=config, received=plan.tensors, x=x, y=y))
            updates.append(ClientUpdate(plan.client_id, len(y), result.upload(), result.metrics()))
        state, metrics = strategy.aggregate(state, round_no, updates, [])
        assert metrics["scaffold_ci_resets"] == 0
        assert all(torch.isfinite(t).all() for t in [*state.weights.values(), *state.buffers.values()])
    loss_end, accuracy = global_eval(state.weights)
    assert loss_end < 0.5 * loss_start
    assert accuracy > 0.85


def test_agent_state_dir_takes_precedence_over_the_raw_config(tmp_path: Path):
    agent_dir, raw_dir = tmp_path / "agent", tmp_path / "raw"
    config = {**ROUND_CONFIG, "round": 1, CI_ROUND_CONFIG: None, "client_state_dir": str(raw_dir)}
    scaffold_client_train(
        ClientTask(config=config, received=received(), x=FEATURES, y=LABELS, state_dir=agent_dir)
    )
    assert (agent_dir / CI_FILE_NAME).exists() and not raw_dir.exists()


def test_simulated_scaffold_job_on_synthetic_non_iid_data_improves_and_stays_finite(tmp_path: Path):
    config = SimulationConfig(
        dataset="synthetic",
        dataset_params={"num_devices": 8},
        partition="natural",
        num_clients=8,
        clients_per_round=4,
        rounds=5,
        model="logreg",
        algorithm="scaffold",
        lr=0.01,
        epochs=1,
        batch_size=10,
        max_steps=10,
    )
    result = simulate(config, state_root=tmp_path)
    assert all(not r.failed and r.metrics["scaffold_ci_resets"] == 0 for r in result.rounds)
    reused = {c for r in result.rounds[1:] for c in r.selected} & set(result.rounds[0].selected)
    assert reused and all((tmp_path / c / CI_FILE_NAME).exists() for c in reused)  # c_i carried over
    assert all(
        torch.isfinite(t).all()
        for t in [*result.final_state.weights.values(), *result.final_state.buffers.values()]
    )
    assert result.accuracies()[-1] > result.initial_metrics["accuracy"] + 0.2
