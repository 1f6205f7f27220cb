import itertools
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from training.fl import client, nets
from training.fl.client import ClientTask, LocalTrainingConfig, TrainingDiverged, train_locally


def toy_data(n=40, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def logreg(d=6, classes=3, seed=0):
    return nets.build_model("logreg", input_shape=(d,), num_classes=classes, seed=seed)


def spec(d=6, classes=3):
    return nets.model_spec_for("logreg", input_shape=(d,), num_classes=classes)


def test_delta_is_trained_minus_global_and_loss_drops():
    x, y = toy_data()
    model = logreg()
    w0 = nets.get_weights(model)
    result = train_locally(model, x, y, LocalTrainingConfig(lr=0.5, epochs=5, batch_size=8), w0)
    trained = nets.get_weights(model)
    for name in w0:
        torch.testing.assert_close(result.delta[name], trained[name] - w0[name])
    assert result.loss_after < result.loss_before
    assert result.steps == result.planned_steps == 5 * 5
    assert result.epochs_done == 5.0 and result.completed and result.num_samples == 40
    assert set(result.metrics()) >= {
        "loss_before",
        "loss_after",
        "samples",
        "steps",
        "epochs_done",
        "train_time_s",
    }


def test_fedprox_step_matches_the_formula():
    """Two full-batch steps: w1 = w_t − η∇F(w_t);  w2 = w1 − η(∇F(w1) + μ(w1 − w_t))."""
    x, y = toy_data(n=16)
    lr, mu = 0.3, 2.0
    wt = nets.get_weights(logreg(seed=1))

    def grad_at(weights):
        m = logreg()
        nets.set_weights(m, weights)
        F.cross_entropy(m(x), y).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    g0 = grad_at(wt)
    w1 = {n: wt[n] - lr * g0[n] for n in wt}
    g1 = grad_at(w1)
    w2 = {n: w1[n] - lr * (g1[n] + mu * (w1[n] - wt[n])) for n in wt}

    cfg = LocalTrainingConfig(lr=lr, epochs=2, batch_size=16, mu=mu)
    result = train_locally(logreg(), x, y, cfg, wt)
    for n in wt:
        torch.testing.assert_close(wt[n] + result.delta[n], w2[n], rtol=1e-5, atol=1e-6)
    # and μ really matters: without it the second step differs
    plain = train_locally(logreg(), x, y, LocalTrainingConfig(lr=lr, epochs=2, batch_size=16), wt)
    assert not torch.allclose(plain.delta["linear.weight"], result.delta["linear.weight"])


def test_proximal_term_keeps_the_model_closer_to_global():
    x, y = toy_data(n=60)
    wt = nets.get_weights(logreg())
    far = train_locally(logreg(), x, y, LocalTrainingConfig(lr=0.5, epochs=10), wt)
    near = train_locally(logreg(), x, y, LocalTrainingConfig(lr=0.5, epochs=10, mu=1.0), wt)

    def norm(delta):
        return sum(float((t**2).sum()) for t in delta.values()) ** 0.5

    assert norm(near.delta) < 0.8 * norm(far.delta)


def test_gradient_correction_and_loss_scale_enter_the_step():
    x, y = toy_data(n=8)
    wt = nets.get_weights(logreg())
    cfg = LocalTrainingConfig(lr=0.1, epochs=1, batch_size=8)
    base = train_locally(logreg(), x, y, cfg, wt)
    shift = {n: torch.full_like(t, 0.5) for n, t in wt.items()}
    corrected = train_locally(logreg(), x, y, cfg, wt, gradient_correction=shift)
    for n in wt:  # one step: Δ' = Δ − η·correction
        torch.testing.assert_close(corrected.delta[n], base.delta[n] - 0.1 * 0.5)
    scaled = train_locally(logreg(), x, y, cfg, wt, loss_scale=3.0)
    for n in wt:
        torch.testing.assert_close(scaled.delta[n], 3.0 * base.delta[n])


def test_same_seed_same_delta_other_seed_other_delta():
    x, y = toy_data()
    wt = nets.get_weights(logreg())
    a = train_locally(logreg(), x, y, LocalTrainingConfig(lr=0.1, epochs=2, seed=5), wt)
    b = train_locally(logreg(), x, y, LocalTrainingConfig(lr=0.1, epochs=2, seed=5), wt)
    c = train_locally(logreg(), x, y, LocalTrainingConfig(lr=0.1, epochs=2, seed=6), wt)
    assert all(torch.equal(a.delta[n], b.delta[n]) for n in wt)
    assert not torch.equal(a.delta["linear.weight"], c.delta["linear.weight"])


def test_max_steps_stops_early_and_reports_partial_work():
    x, y = toy_data(n=40)
    seen = []
    cfg = LocalTrainingConfig(lr=0.1, epochs=3, batch_size=10, max_steps=6)
    result = train_locally(logreg(), x, y, cfg, nets.get_weights(logreg()), progress=seen.append)
    assert result.steps == 6 and result.planned_steps == 6
    assert result.stop_reason == "max_steps" and not result.completed
    assert result.epochs_done == 1.5
    assert [p.step for p in seen] == list(range(1, 7))
    assert [p.epoch for p in seen] == [1, 1, 1, 1, 2, 2]
    assert all(p.steps == 6 and p.loss > 0 for p in seen)


def test_deadline_stops_a_straggler():
    x, y = toy_data(n=40)
    ticks = itertools.count()  # a fake clock: every reading is one "second" later
    cfg = LocalTrainingConfig(lr=0.1, epochs=5, batch_size=10, deadline_s=3)
    result = train_locally(logreg(), x, y, cfg, nets.get_weights(logreg()), clock=lambda: float(next(ticks)))
    assert result.stop_reason == "deadline"
    assert result.steps == 3 and result.planned_steps == 20


def test_last_partial_batch_counts_as_a_step():
    assert client.steps_per_epoch(41, 10) == 5
    assert client.steps_per_epoch(40, 10) == 4
    assert client.steps_per_epoch(3, 10) == 1


def test_diverging_loss_raises():
    x, y = toy_data()
    x = x * 1e30
    with pytest.raises(TrainingDiverged, match="loss"):
        train_locally(logreg(), x, y, LocalTrainingConfig(lr=1e30, epochs=3), nets.get_weights(logreg()))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "no lr"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lr": -1}, "lr must be a positive"),
        ({"lr": 0.1, "epochs": 0}, "epochs"),
        ({"lr": 0.1, "epochs": 1.5}, "epochs must be an integer"),
        ({"lr": 0.1, "batch_size": 0}, "batch_size"),
        ({"lr": 0.1, "mu": -0.1}, "mu"),
        ({"lr": 0.1, "max_steps": 0}, "max_steps"),
        ({"lr": 0.1, "deadline_s": -2}, "deadline_s"),
        ({"lr": 0.1, "seed": True}, "seed"),
    ],
)
def test_bad_local_configs_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        LocalTrainingConfig.from_mapping(config)


def task(algorithm="fedavg", **extra):
    x, y = toy_data()
    config = {
        "algorithm": algorithm,
        "model": spec(),
        "lr": 0.2,
        "epochs": 2,
        "batch_size": 10,
        "seed": 1,
        **extra,
    }
    return ClientTask(config=config, received=nets.initial_weights(spec(), seed=0), x=x, y=y)


def test_dispatch_fedavg_ignores_mu_fedprox_uses_it():
    plain = client.client_train(task("fedavg"))
    fedavg_mu = client.client_train(task("fedavg", mu=5.0))
    fedprox_mu = client.client_train(task("fedprox", mu=5.0))
    w = "linear.weight"
    assert torch.equal(plain.delta[w], fedavg_mu.delta[w])
    assert not torch.allclose(plain.delta[w], fedprox_mu.delta[w])
    assert set(plain.upload()) == {"linear.weight", "linear.bias"}


def test_unknown_algorithm_and_missing_weights_are_clear_errors():
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        client.client_train(task("sgd"))
    t = task()
    with pytest.raises(ValueError, match="global weights lack linear.bias"):
        client.client_train(ClientTask(t.config, {"linear.weight": t.received["linear.weight"]}, t.x, t.y))


def test_extra_received_tensors_are_not_model_weights():
    t = task()
    received = {**t.received, "scaffold.c.linear.bias": torch.zeros(3)}
    result = client.client_train(ClientTask(t.config, received, t.x, t.y))
    assert set(result.delta) == {"linear.weight", "linear.bias"}


def fake_misbehaviour(monkeypatch, apply):
    module = types.ModuleType("training.fl.misbehaviour")
    module.apply_behaviour = apply
    monkeypatch.setitem(sys.modules, "training.fl.misbehaviour", module)


def test_misbehaviour_hook_sees_data_then_update(monkeypatch):
    calls = []

    def apply(name, x, y, delta, *, phase, config, global_weights, rng):
        calls.append((name, phase, delta is None))
        if phase == "data":
            return x, (y + 1) % 3, None
        return x, y, {k: torch.zeros_like(v) for k, v in delta.items()}

    fake_misbehaviour(monkeypatch, apply)
    t = task()
    result = client.client_train(ClientTask(t.config, t.received, t.x, t.y, behaviour="free_rider"))
    assert calls == [("free_rider", "data", True), ("free_rider", "update", False)]
    assert all(float(v.abs().sum()) == 0 for v in result.delta.values())


def test_non_finite_update_is_never_returned(monkeypatch):
    def apply(name, x, y, delta, *, phase, **_):
        if phase == "data":
            return x, y, None
        return x, y, {k: torch.full_like(v, float("nan")) for k, v in delta.items()}

    fake_misbehaviour(monkeypatch, apply)
    t = task()
    with pytest.raises(TrainingDiverged, match="non-finite"):
        client.client_train(ClientTask(t.config, t.received, t.x, t.y, behaviour="noise"))


def test_round_config_gives_each_client_its_own_stable_seed():
    base = {"lr": 0.1, "seed": 7}
    a = client.client_config_for_round(base, job_seed=7, round_no=1, client_id="a")
    again = client.client_config_for_round(base, job_seed=7, round_no=1, client_id="a")
    b = client.client_config_for_round(base, job_seed=7, round_no=1, client_id="b")
    a2 = client.client_config_for_round(base, job_seed=7, round_no=2, client_id="a")
    assert a == again and a["round"] == 1 and a["client_id"] == "a" and a["lr"] == 0.1
    assert len({a["seed"], b["seed"], a2["seed"]}) == 3
    assert 0 <= a["seed"] < 2**63
