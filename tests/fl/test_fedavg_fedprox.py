import random

import pytest
import torch

from training.fl import aggregators, registry
from training.fl.fedavg import FedAvg
from training.fl.fedprox import FedProx
from training.fl.strategy import ClientFailure, ClientInfo, ClientUpdate


def weights():
    return {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}


def update(cid, n, dw, db, loss=None):
    metrics = {} if loss is None else {"loss_after": loss}
    return ClientUpdate(cid, n, {"w": torch.tensor(dw), "b": torch.tensor([db])}, metrics)


def test_fedavg_is_the_sample_weighted_mean_hand_computed():
    strategy = FedAvg()
    state = strategy.initial_state(weights())
    ups = [update("a", 10, [1.0, 0.0], 2.0, loss=1.0), update("b", 30, [-1.0, 4.0], 0.0, loss=3.0)]
    new, metrics = strategy.aggregate(state, 1, ups, [ClientFailure("c", "timeout")])
    # w = [1, 2] + (10·[1, 0] + 30·[−1, 4]) / 40 = [1 − 0.5, 2 + 3] ; b = 0.5 + (10·2)/40
    torch.testing.assert_close(new.weights["w"], torch.tensor([0.5, 5.0]))
    torch.testing.assert_close(new.weights["b"], torch.tensor([1.0]))
    # equivalently Σ (n_k / n) w^k with w^k = w_t + Δ_k
    client_models = [{k: state.weights[k] + u.tensors[k] for k in state.weights} for u in ups]
    expected_w = 0.25 * client_models[0]["w"] + 0.75 * client_models[1]["w"]
    torch.testing.assert_close(new.weights["w"], expected_w)
    assert metrics["num_reported"] == 2 and metrics["num_failed"] == 1 and metrics["samples"] == 40
    assert metrics["train_loss"] == pytest.approx(2.5)
    torch.testing.assert_close(state.weights["w"], torch.tensor([1.0, 2.0]))  # the old state is untouched


def test_server_learning_rate_scales_the_step():
    strategy = FedAvg(server_lr=0.5)
    state = strategy.initial_state(weights())
    new, _ = strategy.aggregate(state, 1, [update("a", 1, [2.0, 2.0], 2.0)], [])
    torch.testing.assert_close(new.weights["w"], torch.tensor([2.0, 3.0]))


def test_no_updates_leaves_the_model_unchanged():
    strategy = FedAvg()
    state = strategy.initial_state(weights())
    new, metrics = strategy.aggregate(state, 1, [], [ClientFailure("a", "offline", "dropped")])
    assert new is state and metrics == {"num_reported": 0.0, "num_failed": 1.0}


def test_duplicate_updates_are_refused():
    strategy = FedAvg()
    state = strategy.initial_state(weights())
    with pytest.raises(ValueError, match="duplicate"):
        strategy.aggregate(state, 1, [update("a", 1, [0.0, 0.0], 0.0)] * 2, [])


def test_extra_uploaded_tensors_do_not_enter_fedavg():
    strategy = FedAvg()
    state = strategy.initial_state(weights())
    up = update("a", 1, [1.0, 1.0], 1.0)
    up.tensors["other.x"] = torch.tensor([100.0])
    new, _ = strategy.aggregate(state, 1, [up], [])
    assert set(new.weights) == {"w", "b"}


def test_configure_sends_weights_and_config():
    state = FedProx(mu=0.3).initial_state(weights())
    plan = FedProx(mu=0.3).configure(state, 2, ["a", "b"], {"lr": 0.1, "epochs": 2})
    assert [p.client_id for p in plan] == ["a", "b"]
    assert plan[0].config == {"lr": 0.1, "epochs": 2, "algorithm": "fedprox", "mu": 0.3}
    assert torch.equal(plan[1].tensors["w"], state.weights["w"])
    fedavg_plan = FedAvg().configure(state, 2, ["a"], {"lr": 0.1})
    assert fedavg_plan[0].config["algorithm"] == "fedavg" and "mu" not in fedavg_plan[0].config


def test_fedprox_aggregates_partial_work_by_samples():
    strategy = FedProx(mu=1.0)
    state = strategy.initial_state(weights())
    full = ClientUpdate(
        "a", 30, {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}, {"completed": 1.0}
    )
    partial = ClientUpdate(
        "b", 10, {"w": torch.tensor([-3.0, 5.0]), "b": torch.tensor([0.0])}, {"completed": 0.0}
    )
    new, metrics = strategy.aggregate(state, 1, [full, partial], [])
    torch.testing.assert_close(new.weights["w"], torch.tensor([1.0, 2.0]) + torch.tensor([0.0, 2.0]))
    assert metrics["num_partial"] == 1


def test_default_selection_is_uniform_seeded_and_within_goal():
    strategy = FedAvg()
    state = strategy.initial_state(weights())
    available = [ClientInfo(f"c{i}", 10) for i in range(20)]
    a = strategy.select(state, 1, available, 10, random.Random(3))
    b = strategy.select(state, 1, available, 10, random.Random(3))
    assert a == b and len(set(a)) == 10
    assert strategy.select(state, 1, available[:4], 10, random.Random(3)).__len__() == 4
    counts = dict.fromkeys((c.client_id for c in available), 0)
    rng = random.Random(0)
    for _ in range(400):
        for cid in strategy.select(state, 1, available, 5, rng):
            counts[cid] += 1
    assert min(counts.values()) > 60 and max(counts.values()) < 140  # expected 100 each


def test_weighted_mean_validates_inputs():
    with pytest.raises(ValueError, match="zero updates"):
        aggregators.weighted_mean([], [])
    with pytest.raises(ValueError, match="positive total"):
        aggregators.weighted_mean([{"w": torch.ones(1)}], [0])
    with pytest.raises(ValueError, match="same tensor names"):
        aggregators.weighted_mean([{"w": torch.ones(1)}, {"v": torch.ones(1)}], [1, 1])


def test_weighted_mean_accumulates_in_float64():
    big, small = torch.tensor([1e8], dtype=torch.float32), torch.tensor([1.0], dtype=torch.float32)
    out = aggregators.weighted_mean([{"w": big}, {"w": -big}, {"w": small}], [1, 1, 1])
    torch.testing.assert_close(out["w"], torch.tensor([1.0 / 3.0]))
    assert out["w"].dtype == torch.float32


def test_registry_builds_strategies_with_defaults_and_rejects_unknowns():
    assert {"fedavg", "fedprox"} <= set(registry.STRATEGY_NAMES)
    prox = registry.make_strategy("fedprox", {"mu": 0.5})
    assert isinstance(prox, FedProx) and prox.mu == 0.5 and prox.server_lr == 1.0
    assert registry.strategy_defaults("fedprox")["mu"] == 0.01
    with pytest.raises(ValueError, match="unknown algorithm"):
        registry.make_strategy("fedsgd", {})
    with pytest.raises(ValueError, match="does not take mu"):
        registry.make_strategy("fedavg", {"mu": 1})
    with pytest.raises(ValueError, match="mu must be >= 0"):
        registry.make_strategy("fedprox", {"mu": -1})


def test_registry_can_use_a_robust_aggregator():
    strategy = registry.make_strategy("fedavg", {"aggregator": "median"})
    state = strategy.initial_state({"w": torch.zeros(1)})
    ups = [
        ClientUpdate(c, n, {"w": torch.tensor([v])})
        for c, n, v in [("a", 1, 1.0), ("b", 1, 2.0), ("c", 100, 90.0)]
    ]
    new, _ = strategy.aggregate(state, 1, ups, [])
    torch.testing.assert_close(new.weights["w"], torch.tensor([2.0]))
    with pytest.raises(ValueError, match="unknown aggregator"):
        registry.make_strategy("fedavg", {"aggregator": "mode"})
