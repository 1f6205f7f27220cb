"""FedLaAvg server rules: oldest-participation selection, latest-gradient running mean, stale and
never-seen clients (ALGORITHMS.md §4)."""

import random

import pytest
import torch

from tests.fl.test_scaffold import blobs  # the same label-skewed blobs as the SCAFFOLD run
from training.fl.client import ClientTask, client_train
from training.fl.evaluate import evaluate
from training.fl.fedlaavg import (
    LAST_FAILED_META,
    LAST_ROUND_META,
    FedLaAvg,
    fedlaavg_client_train,
    full_mean_gradient,
    g_key,
    gbar_key,
    loss_scale,
)
from training.fl.nets import build_model_from_spec, initial_weights, set_weights
from training.fl.registry import JobContext, make_strategy
from training.fl.strategy import ClientFailure, ClientInfo, ClientUpdate

LR = 0.5


def weights() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), "b": torch.tensor([0.25, -1.0])}


def update(cid: str, dw: list[list[float]], db: list[float], n: int = 10) -> ClientUpdate:
    return ClientUpdate(cid, n, {"w": torch.tensor(dw), "b": torch.tensor(db)})


def infos(*ids: str) -> list[ClientInfo]:
    return [ClientInfo(cid, 10) for cid in ids]


def test_select_takes_oldest_among_available_never_first():
    strategy = FedLaAvg(num_clients=5, lr=LR)
    state = strategy.initial_state(weights())
    state.meta[LAST_ROUND_META] = {"a": 5, "b": 2, "d": 1, "e": 4}
    # d is the oldest overall but offline; c has never taken part.
    chosen = strategy.select(state, 6, infos("a", "b", "c", "e"), 3, random.Random(0))
    assert chosen == ["c", "b", "e"]


def test_select_is_reproducible_and_breaks_ties_with_the_rng():
    strategy = FedLaAvg(num_clients=8, lr=LR)
    state = strategy.initial_state(weights())
    available = infos(*"abcdefgh")
    picks = {tuple(strategy.select(state, 1, available, 3, random.Random(seed))) for seed in range(20)}
    assert len(picks) > 1  # ties among never-seen phones are not always resolved the same way
    same = [strategy.select(state, 1, available, 3, random.Random(7)) for _ in range(2)]
    assert same[0] == same[1]


def test_select_puts_recent_failures_after_equally_old_phones():
    strategy = FedLaAvg(num_clients=3, lr=LR)
    state = strategy.initial_state(weights())
    state.meta[LAST_FAILED_META] = {"a": 3}
    for seed in range(10):
        assert "a" not in strategy.select(state, 4, infos("a", "b", "c"), 2, random.Random(seed))


def test_never_seen_clients_contribute_zero():
    strategy = FedLaAvg(num_clients=4, lr=LR)
    state = strategy.initial_state(weights())
    new, metrics = strategy.aggregate(state, 1, [update("a", [[4.0, 0.0], [0.0, -8.0]], [2.0, 2.0])], [])
    # G_a = -Δ/γ; Ḡ = G_a/4 (three zeros); x ← x − γ·Ḡ = x + Δ/4.
    assert torch.allclose(new.weights["w"], torch.tensor([[2.0, -2.0], [0.5, 1.0]]))
    assert torch.allclose(new.weights["b"], torch.tensor([0.75, -0.5]))
    assert torch.allclose(new.buffers[g_key("a", "w")], torch.tensor([[-8.0, 0.0], [0.0, 16.0]]))
    assert metrics["num_never_seen"] == 3 and metrics["num_stale"] == 0


def test_absent_clients_contribute_their_stale_gradient():
    strategy = FedLaAvg(num_clients=2, lr=LR)
    s0 = strategy.initial_state(weights())
    s1, _ = strategy.aggregate(s0, 1, [update("a", [[2.0, 2.0], [2.0, 2.0]], [0.0, 0.0])], [])
    s2, metrics = strategy.aggregate(
        s1, 2, [update("b", [[0.0, 0.0], [0.0, 0.0]], [4.0, 4.0])], [ClientFailure("a", "offline")]
    )
    # a is absent in round 2 but its round-1 G still counts: x2 = x1 + (Δa + Δb)/2.
    expected_w = s1.weights["w"] + torch.full((2, 2), 1.0)
    expected_b = s1.weights["b"] + torch.tensor([2.0, 2.0])
    assert torch.allclose(s2.weights["w"], expected_w)
    assert torch.allclose(s2.weights["b"], expected_b)
    assert metrics["num_stale"] == 1
    assert s2.meta[LAST_ROUND_META] == {"a": 1, "b": 2}
    assert s2.meta[LAST_FAILED_META] == {"a": 2}


def test_incremental_mean_equals_full_recomputation_over_random_rounds():
    torch.manual_seed(0)
    rng = random.Random(1)
    n_clients = 7
    strategy = FedLaAvg(num_clients=n_clients, lr=0.1)
    state = strategy.initial_state(weights())
    ids = [f"phone-{i}.local:5555" for i in range(n_clients)]  # dots and colons in ids are fine
    for round_no in range(1, 40):
        reporters = rng.sample(ids, rng.randint(0, 4))
        ups = [ClientUpdate(cid, 10, {"w": torch.randn(2, 2), "b": torch.randn(2)}) for cid in reporters]
        before = state.weights
        state, _ = strategy.aggregate(state, round_no, ups, [])
        exact = full_mean_gradient(state, n_clients)
        for p in ("w", "b"):
            assert torch.allclose(state.buffers[gbar_key(p)], exact[p], rtol=0, atol=1e-12)
            expected = (before[p].double() - 0.1 * exact[p]).float()
            assert torch.allclose(state.weights[p], expected, atol=1e-6)


def test_more_clients_than_num_clients_is_an_error():
    strategy = FedLaAvg(num_clients=1, lr=LR)
    state = strategy.initial_state(weights())
    with pytest.raises(ValueError, match="more distinct clients"):
        zeros = ([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
        strategy.aggregate(state, 1, [update("a", *zeros), update("b", *zeros)], [])


def test_configure_sends_weights_and_scaling_inputs():
    strategy = FedLaAvg(num_clients=3, lr=0.01, total_samples=300, local_steps=10)
    state = strategy.initial_state(weights())
    [plan] = strategy.configure(state, 1, ["a"], {"local_steps": 99, "batch_size": 5, "lr": 9.0})
    assert set(plan.tensors) == {"w", "b"}
    assert plan.config["lr"] == 0.01  # the server's γ wins: it is what turns deltas back into gradients
    config = plan.config
    assert (config["num_clients"], config["total_samples"], config["local_steps"]) == (3, 300, 10)
    assert loss_scale(3, 50, 300) == pytest.approx(0.5)
    assert loss_scale(3, 50, None) == 1.0


SPEC = {"name": "logreg", "input_shape": [3], "num_classes": 2}


def client_task(extra: dict) -> ClientTask:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=gen), torch.tensor([0, 1, 1, 0])
    model = {"linear.weight": torch.randn(2, 3, generator=gen), "linear.bias": torch.zeros(2)}
    config = {"algorithm": "fedlaavg", "model": SPEC, "lr": 0.1, "batch_size": 4, "num_clients": 1, **extra}
    return ClientTask(config=config, received=model, x=x, y=y)


def test_client_runs_exactly_c_steps_and_reports_completed():
    result = fedlaavg_client_train(client_task({"local_steps": 3, "batch_size": 3}))
    assert result.steps == 3 and result.completed  # 3 steps over batches of 3, 1 from 4 samples


def test_client_loss_is_scaled_by_n_times_share():
    # One full-batch step: the delta is -γ·s·∇F, so it scales linearly with s = N·n_i/n.
    plain = fedlaavg_client_train(client_task({"local_steps": 1}))
    scaled = fedlaavg_client_train(client_task({"local_steps": 1, "num_clients": 4, "total_samples": 8}))
    for name in plain.delta:
        assert torch.allclose(scaled.delta[name], 2.0 * plain.delta[name], atol=1e-6)
        assert plain.delta[name].abs().sum() > 0


def test_client_needs_its_step_budget_and_population():
    with pytest.raises(ValueError, match="local_steps"):
        fedlaavg_client_train(client_task({}))
    with pytest.raises(ValueError, match="num_clients"):
        fedlaavg_client_train(client_task({"local_steps": 1, "num_clients": 0}))


def test_server_gradient_is_the_sum_of_client_gradients():
    # After one full-batch step from x, G = -Δ/γ is the gradient of the (scaled) loss at x.
    task = client_task({"local_steps": 1})
    result = fedlaavg_client_train(task)
    model = torch.nn.Linear(3, 2)
    model.load_state_dict({k.removeprefix("linear."): v for k, v in task.received.items()})
    torch.nn.functional.cross_entropy(model(task.x), task.y).backward()
    strategy = FedLaAvg(num_clients=1, lr=0.1, local_steps=1)
    state, _ = strategy.aggregate(
        strategy.initial_state(dict(task.received)), 1, [ClientUpdate("a", 4, result.delta)], []
    )
    assert torch.allclose(state.buffers[g_key("a", "linear.weight")], model.weight.grad, atol=1e-5)


def test_fedlaavg_with_alternating_availability_learns_every_class():
    shards = blobs()
    spec = {"name": "logreg", "input_shape": [2], "num_classes": 4}
    ids = ["p0", "p1", "p2", "p3"]
    total = sum(len(y) for _, y in shards)
    strategy = make_strategy(
        "fedlaavg", {"local_steps": 5}, JobContext(num_clients=4, lr=0.1, total_samples=total)
    )
    state = strategy.initial_state(initial_weights(spec, seed=0))
    rng = random.Random(0)
    for round_no in range(1, 21):
        online = ids[:2] if round_no % 2 else ids[2:]  # two groups take turns, as in the paper's setup
        chosen = strategy.select(state, round_no, [ClientInfo(c, 30) for c in online], 1, rng)
        updates = []
        for plan in strategy.configure(
            state, round_no, chosen, {"model": spec, "batch_size": 10, "seed": round_no}
        ):
            x, y = shards[ids.index(plan.client_id)]
            result = client_train(ClientTask(config=plan.config, received=plan.tensors, x=x, y=y))
            updates.append(ClientUpdate(plan.client_id, len(y), result.delta))
        state, metrics = strategy.aggregate(state, round_no, updates, [])
    # Every phone took part (oldest first), and the stale gradients of the offline half kept steering.
    assert set(state.meta[LAST_ROUND_META]) == set(ids)
    assert metrics["num_stale"] == 3
    model = build_model_from_spec(spec)
    set_weights(model, state.weights)
    all_x, all_y = torch.cat([x for x, _ in shards]), torch.cat([y for _, y in shards])
    assert evaluate(model, all_x, all_y).accuracy > 0.85


def test_a_straggler_cut_below_the_budget_is_partial_work():
    result = fedlaavg_client_train(client_task({"local_steps": 5, "batch_size": 1, "max_steps": 2}))
    assert result.steps == 2 and not result.completed
