import sys
import types

import pytest
import torch

from training.fl.simulate import SimulationConfig, client_id, prepare, simulate

SMALL = {"num_clients": 6, "clients_per_round": 3, "rounds": 3, "model": "logreg", "epochs": 1}


def test_defaults_reach_90_percent_on_digits_iid():
    """The platform's form defaults: FedAvg, MLP 64-200-200-10, 20 IID clients, 10 per round, E=5, B=10,
    η=0.1. They must reach 90% test accuracy within 30 rounds; they do so in well under 12."""
    config = SimulationConfig(rounds=12)
    defaults = SimulationConfig()
    assert (defaults.num_clients, defaults.clients_per_round, defaults.model, defaults.rounds) == (
        20,
        10,
        "mlp",
        30,
    )
    result = simulate(config)
    reached = result.rounds_to_accuracy(0.90)
    assert reached is not None and reached <= 12, result.accuracies()
    assert result.accuracies()[-1] >= 0.90
    assert result.initial_metrics["accuracy"] < 0.3  # it learned; it did not start there
    assert all(len(r.selected) == 10 and len(set(r.selected)) == 10 for r in result.rounds)


def test_same_config_same_result():
    a = simulate(SimulationConfig(**SMALL))
    b = simulate(SimulationConfig(**SMALL))
    assert a.selections() == b.selections()
    for k in a.final_state.weights:
        assert torch.equal(a.final_state.weights[k], b.final_state.weights[k])
    c = simulate(SimulationConfig(**{**SMALL, "seed": 1}))
    assert a.selections() != c.selections()


def capture(traces):
    return lambda trace: traces.append(trace)


def test_fixed_selection_replays_exactly():
    config = SimulationConfig(**SMALL)
    base = simulate(config)
    replay = simulate(config, selections=base.selections())
    for k in base.final_state.weights:
        assert torch.equal(base.final_state.weights[k], replay.final_state.weights[k])


def test_leave_one_out_removes_only_that_client():
    config = SimulationConfig(**SMALL)
    base_traces, loo_traces = [], []
    base = simulate(config, on_round=capture(base_traces))
    victim = base.rounds[0].selected[0]
    loo = simulate(config, selections=base.selections(), exclude={victim}, on_round=capture(loo_traces))
    assert all(victim not in r.reported for r in loo.rounds)
    assert [r.selected for r in loo.rounds] == base.selections()
    # round 1 starts from the same w_0, so every other client's update is bit-identical
    base_updates = {u.client_id: u for u in base_traces[0].updates}
    for update in loo_traces[0].updates:
        for name, tensor in update.tensors.items():
            assert torch.equal(tensor, base_updates[update.client_id].tensors[name])
    assert not torch.equal(
        base.final_state.weights["linear.weight"], loo.final_state.weights["linear.weight"]
    )


def test_exclude_without_fixed_selection_never_picks_the_client():
    config = SimulationConfig(**{**SMALL, "rounds": 4})
    result = simulate(config, exclude={"c000", "c001"})
    assert all(not {"c000", "c001"} & set(r.selected) for r in result.rounds)


def test_round_one_is_fedavg_of_the_client_code():
    """Recompute round 1 by hand from client_train outputs and the weighted mean."""
    from training.fl.client import ClientTask, client_config_for_round, client_train

    config = SimulationConfig(**{**SMALL, "rounds": 1})
    setup = prepare(config)
    result = simulate(config, setup=setup)
    w0 = setup.initial_state().weights
    base = config.base_client_config(setup.model_spec) | {"algorithm": "fedavg"}
    total = 0
    acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in w0.items()}
    for cid in result.rounds[0].selected:
        x, y = setup.client_data(cid)
        cfg = client_config_for_round(base, job_seed=config.seed, round_no=1, client_id=cid)
        out = client_train(ClientTask(cfg, w0, x, y))
        total += out.num_samples
        for k in acc:
            acc[k] += out.delta[k].double() * out.num_samples
    for k in w0:
        torch.testing.assert_close(result.final_state.weights[k], w0[k] + (acc[k] / total).float())


def test_stragglers_report_partial_work_and_still_count():
    config = SimulationConfig(**{**SMALL, "rounds": 2, "straggler_fraction": 0.5, "epochs": 3})
    traces = []
    result = simulate(config, on_round=capture(traces))
    for trace in traces:
        partial = [u for u in trace.updates if u.metrics["completed"] == 0.0]
        assert len(partial) == 2  # round(0.5 · 3)
        for u in partial:
            full_work = 3 * -(-u.num_samples // 10)  # E · ⌈n/B⌉
            assert 1 <= u.metrics["steps"] < full_work
            assert u.metrics["epochs_done"] < 3
        assert trace.record.metrics["num_partial"] == 2
    assert all(len(r.reported) == 3 for r in result.rounds)


def test_a_client_sending_nan_is_a_failure_and_the_round_goes_on(monkeypatch):
    module = types.ModuleType("training.fl.misbehaviour")

    def apply_behaviour(name, x, y, delta, *, phase, **_):
        if phase == "data":
            return x, y, None
        return x, y, {k: torch.full_like(v, float("nan")) for k, v in delta.items()}

    module.apply_behaviour = apply_behaviour
    monkeypatch.setitem(sys.modules, "training.fl.misbehaviour", module)
    config = SimulationConfig(**{**SMALL, "rounds": 1})
    base = simulate(config)
    bad = base.rounds[0].selected[0]
    result = simulate(config, behaviours={bad: "noise"})
    assert "non-finite" in result.rounds[0].failed[bad]
    assert len(result.rounds[0].reported) == 2
    assert result.rounds[0].metrics["num_failed"] == 1


def test_fedprox_on_synthetic_natural_devices_runs():
    config = SimulationConfig(
        dataset="synthetic",
        dataset_params={"alpha": 1.0, "beta": 1.0},
        partition="natural",
        num_clients=30,
        clients_per_round=10,
        rounds=3,
        model="logreg",
        algorithm="fedprox",
        algorithm_params={"mu": 1.0},
        lr=0.01,
        epochs=1,
        batch_size=10,
    )
    result = simulate(config)
    assert [len(r.selected) for r in result.rounds] == [10, 10, 10]
    assert result.rounds[-1].metrics["loss"] < result.initial_metrics["loss"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exclude": {"c999"}}, "unknown clients"),
        ({"selections": [["c000"]]}, "selections cover 1 rounds"),
    ],
)
def test_bad_simulation_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(SimulationConfig(**SMALL), **kwargs)


def test_config_dict_round_trip_and_validation():
    config = SimulationConfig(**SMALL)
    assert SimulationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown simulation settings: learning_rate"):
        SimulationConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="straggler_fraction"):
        SimulationConfig(straggler_fraction=2)
    assert client_id(7) == "c007"
