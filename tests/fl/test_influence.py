"""Fed-Influence: the estimate against exact leave-one-out on a tiny logistic-regression job, the Fisher
propagation maths, layer-wise truncation, the budget, and persistence across a restart.

Tolerance for the estimate (stated in ALGORITHMS.md terms): Pearson r ≥ 0.9 between estimated and exact
leave-one-out *loss* influence over all clients (the paper reports 0.986 for logistic regression), and
every client's estimate within 30% of the largest exact influence in absolute value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.fl.influence import (
    InfluenceConfig,
    InfluenceTracker,
    apply_fisher_steps,
    segment_boundaries,
)
from training.fl.loo import compare, exact_leave_one_out, pearson, simulate_with_influence, spearman
from training.fl.simulate import SimulationConfig, prepare

# ---------------------------------------------------------------------------------------------------------
# The estimate against the ground truth.
# ---------------------------------------------------------------------------------------------------------

TINY_JOB = SimulationConfig(
    model="logreg",
    num_clients=6,
    clients_per_round=4,
    rounds=4,
    lr=0.1,
    epochs=1,
    batch_size=20,
    seed=3,
)
FLIPPER = "c000"


@pytest.fixture(scope="module")
def tiny_job_results() -> dict[str, object]:
    setup = prepare(TINY_JOB)
    behaviours = {FLIPPER: "label_flip"}
    base, tracker, _ = simulate_with_influence(
        TINY_JOB, InfluenceConfig(seed=1), setup=setup, behaviours=behaviours
    )
    exact = exact_leave_one_out(TINY_JOB, setup=setup, base=base, behaviours=behaviours)
    return {"setup": setup, "base": base, "tracker": tracker, "exact": exact, "behaviours": behaviours}


def test_estimate_matches_exact_leave_one_out_and_ranks_the_label_flipper_lowest(
    tiny_job_results: dict[str, object],
) -> None:
    tracker = tiny_job_results["tracker"]
    exact = tiny_job_results["exact"]
    assert isinstance(tracker, InfluenceTracker)
    estimated = {c: v["loss"] for c, v in tracker.influence().items()}
    first_order = {c: v["loss_first_order"] for c, v in tracker.influence().items()}
    truth = exact.loss()  # type: ignore[attr-defined]
    assert set(estimated) == set(truth) and len(truth) == TINY_JOB.num_clients

    agreement = compare(estimated, truth)
    assert agreement["pearson"] >= 0.9
    assert compare(first_order, truth)["pearson"] >= 0.9
    scale = max(abs(v) for v in truth.values())
    assert all(abs(estimated[c] - truth[c]) <= 0.3 * scale for c in truth)

    # The flipper is the most harmful client both by the estimate and by the exact replay.
    assert agreement["lowest_estimated"] == FLIPPER and agreement["lowest_exact"] == FLIPPER
    assert estimated[FLIPPER] < 0 and truth[FLIPPER] < 0


def test_interpolated_trajectory_also_matches(tiny_job_results: dict[str, object]) -> None:
    setup, exact = tiny_job_results["setup"], tiny_job_results["exact"]
    _, tracker, _ = simulate_with_influence(
        TINY_JOB,
        {"trajectory": "interpolate", "seed": 1},
        setup=setup,  # type: ignore[arg-type]
        behaviours=tiny_job_results["behaviours"],  # type: ignore[arg-type]
    )
    estimated = {c: v["loss"] for c, v in tracker.influence().items()}
    assert compare(estimated, exact.loss())["pearson"] >= 0.9  # type: ignore[attr-defined]


def test_per_round_records_and_cost_are_kept(tiny_job_results: dict[str, object]) -> None:
    tracker = tiny_job_results["tracker"]
    base = tiny_job_results["base"]
    assert isinstance(tracker, InfluenceTracker)
    assert [c.round for c in tracker.costs] == list(range(1, TINY_JOB.rounds + 1))
    assert all(c.per_sample_gradients > 0 and c.seconds > 0 for c in tracker.costs[1:])
    summary = tracker.summary()
    assert summary["fisher_source"] == "server validation data"
    influence = tracker.influence()[FLIPPER]
    first = influence["first_round"]
    assert [r["round"] for r in influence["rounds"]] == list(range(first, TINY_JOB.rounds + 1))
    selected_rounds = {r.round_no for r in base.rounds if FLIPPER in r.reported}  # type: ignore[attr-defined]
    assert {r["round"] for r in influence["rounds"] if r["selected"]} == selected_rounds
    assert all(r["delta_norm"] == 0.0 for r in influence["rounds"] if not r["selected"])


# ---------------------------------------------------------------------------------------------------------
# The recursion on hand-checkable cases.
# ---------------------------------------------------------------------------------------------------------


def _linear_factory() -> nn.Module:
    return nn.Linear(3, 2)


def _validation(scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(40, 3, generator=gen) * scale, torch.randint(0, 2, (40,), generator=gen)


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((2, 3), value), "bias": torch.full((2,), value)}


def _delta(seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(2, 3, generator=gen) * scale, "bias": torch.randn(2, generator=gen) * scale}


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d["weight"].reshape(-1), d["bias"].reshape(-1)]).double()


def test_first_round_influence_is_mean_without_c_minus_mean() -> None:
    tracker = InfluenceTracker(_linear_factory, _validation(), {"evaluate": False})
    d_a, d_b, d_c = _delta(1), _delta(2), _delta(3)
    tracker.observe_round(1, _weights(0.0), [("a", 10, d_a), ("b", 30, d_b)], lr=0.1, local_steps=2)
    mean = (10 * _flat(d_a) + 30 * _flat(d_b)) / 40
    assert torch.allclose(_flat(tracker.influence_at("a")), _flat(d_b) - mean, atol=1e-6)
    assert torch.allclose(_flat(tracker.influence_at("b")), _flat(d_a) - mean, atol=1e-6)
    # A client alone in its round: removing it removes the round, so δ = −mean and its ε is carried by M = I.
    before = _flat(tracker.influence_at("a"))
    tracker.observe_round(2, _weights(0.0), [("c", 5, d_c)], lr=0.1, local_steps=2)
    assert torch.allclose(_flat(tracker.influence_at("c")), -_flat(d_c), atol=1e-6)
    assert not torch.allclose(
        _flat(tracker.influence_at("a")), before
    )  # a ∉ S_2: propagated through c's steps
    assert tracker.influence()["a"]["rounds"][-1]["delta_norm"] == 0.0


def test_fisher_steps_match_the_dense_matrix_power() -> None:
    gen = torch.Generator().manual_seed(4)
    gradients = torch.randn(5, 8, generator=gen, dtype=torch.float64)  # N_s = 5 < D = 8: rank-deficient F
    sigma = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    fisher = gradients.T @ gradients / 5
    lr = 0.05
    one_step = sigma - (lr / 5) * (sigma @ gradients.T) @ gradients  # the spec's σ − (η/N_s) Σ g (gᵀσ)
    assert torch.allclose(apply_fisher_steps(sigma, gradients, lr, 1), one_step)
    for steps in (1, 2, 7):
        dense = torch.linalg.matrix_power(torch.eye(8, dtype=torch.float64) - lr * fisher, steps)
        assert torch.allclose(apply_fisher_steps(sigma, gradients, lr, steps), sigma @ dense.T, atol=1e-10)


def test_truncation_switches_a_layer_off_when_the_propagated_term_grows() -> None:
    config = {"evaluate": False, "layer_grouping": "tensor", "fisher_samples": 40}
    tracker = InfluenceTracker(_linear_factory, _validation(scale=5.0), config)
    updates = [("a", 10, _delta(1)), ("b", 10, _delta(2)), ("c", 10, _delta(3))]
    tracker.observe_round(1, _weights(0.0), updates, lr=0.001, local_steps=2)
    assert all(not v["truncated_layers"] for v in tracker.influence().values())

    # A step size far beyond 2/λ_max makes (I − ηF)^m expand: the propagated term outgrows ε_{t−1}.
    round_two = [("b", 10, _delta(4)), ("c", 10, _delta(5))]
    tracker.observe_round(2, _weights(0.0), round_two, lr=5.0, local_steps=3)
    influence = tracker.influence()
    assert influence["a"]["truncated_layers"] == {"weight": 2, "bias": 2}
    assert all(influence[c]["truncated_layers"] == {"weight": 2, "bias": 2} for c in "bc")
    # Truncated layers keep only δ_t: a was not in round 2, so δ_2 = 0 and its ε is now zero.
    assert all(float(t.abs().max()) == 0.0 for t in tracker.influence_at("a").values())

    # Permanent: in a later, well-behaved round a's ε is exactly δ_3 (nothing propagated).
    d6, d7 = _delta(6), _delta(7)
    tracker.observe_round(3, _weights(0.0), [("a", 10, d6), ("b", 10, d7)], lr=0.001, local_steps=2)
    for name in ("weight", "bias"):
        assert torch.allclose(
            tracker.influence_at("a")[name], d7[name] - (d6[name] + d7[name]) / 2, atol=1e-6
        )
    assert tracker.influence()["a"]["truncated_layers"] == {"weight": 2, "bias": 2}


def test_no_truncation_with_a_small_step_on_a_convex_model() -> None:
    tracker = InfluenceTracker(_linear_factory, _validation(), {"evaluate": False})
    for round_no in range(1, 5):
        updates = [(cid, 10, _delta(10 * round_no + i)) for i, cid in enumerate("abc")]
        tracker.observe_round(round_no, _weights(0.0), updates, lr=0.05, local_steps=4)
    assert all(not v["truncated_layers"] for v in tracker.influence().values())


def test_budget_bounds_the_fisher_products_per_round() -> None:
    tracker = InfluenceTracker(
        _linear_factory, _validation(), {"evaluate": False, "budget": 6, "fisher_samples": 10}
    )
    updates = [("a", 10, _delta(1)), ("b", 10, _delta(2)), ("c", 10, _delta(3))]
    tracker.observe_round(1, _weights(0.0), updates, lr=0.05, local_steps=20)
    cost = tracker.observe_round(2, _weights(0.0), updates, lr=0.05, local_steps=20)
    # Three clients with influence, budget 6 -> two Fisher samples covering the 20 local steps.
    assert cost.segments == 2 and cost.fisher_products == 6 and cost.per_sample_gradients == 20
    unlimited = InfluenceTracker(_linear_factory, _validation(), {"evaluate": False, "fisher_samples": 10})
    unlimited.observe_round(1, _weights(0.0), updates, lr=0.05, local_steps=20)
    assert unlimited.observe_round(2, _weights(0.0), updates, lr=0.05, local_steps=20).fisher_products == 60
    assert segment_boundaries(20, 2, [20]) == [10, 20]
    assert segment_boundaries(20, 2, [7, 20]) == [7, 10, 20]


def test_state_survives_a_restart_and_rounds_are_idempotent(tmp_path: Path) -> None:
    validation = _validation()
    rounds = [[(cid, 10 + i, _delta(10 * r + i)) for i, cid in enumerate("abc")] for r in range(3)]
    original = InfluenceTracker(_linear_factory, validation, {"fisher_samples": 8})
    for r in range(2):
        original.observe_round(r + 1, _weights(0.1 * r), rounds[r], lr=0.1, local_steps=3)
    original.save(tmp_path / "influence.safetensors")
    restored = InfluenceTracker.load(tmp_path / "influence.safetensors", _linear_factory, validation)

    again = restored.observe_round(2, _weights(0.1), rounds[1], lr=0.1, local_steps=3)  # a retried task
    assert again.round == 2 and restored.last_round == 2
    for tracker in (original, restored):
        tracker.observe_round(3, _weights(0.2), rounds[2], lr=0.1, local_steps=3)
    assert original.influence() == restored.influence()
    for cid in "abc":
        a, b = original.influence_at(cid), restored.influence_at(cid)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        InfluenceConfig.from_mapping({"fisher_sample": 10})
    with pytest.raises(ValueError):
        InfluenceConfig(trajectory="exact")
    with pytest.raises(ValueError):
        InfluenceConfig(budget=0)


def test_correlations_by_hand() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    # Ties share their average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> r = 0.866...
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)


def test_an_invalid_round_is_rejected_without_changing_the_state() -> None:
    tracker = InfluenceTracker(_linear_factory, _validation(), {"evaluate": False})
    tracker.observe_round(
        1, _weights(0.0), [("a", 10, _delta(1)), ("b", 10, _delta(2))], lr=0.1, local_steps=2
    )
    before = tracker.state()
    bad_rounds = [
        [("a", 10, _delta(3)), ("a", 10, _delta(4))],  # duplicate client
        [("c", 0, _delta(3)), ("a", 10, _delta(4))],  # no samples
        [("c", 10, {"weight": torch.zeros(2, 3)}), ("a", 10, _delta(4))],  # missing tensor
    ]
    for updates in bad_rounds:
        with pytest.raises(ValueError):
            tracker.observe_round(2, _weights(0.0), updates, lr=0.1, local_steps=2)
    with pytest.raises(ValueError):
        tracker.observe_round(2, _weights(0.0), [("c", 10, _delta(3))], lr=0.1, local_steps={"a": 2})
    after = tracker.state()
    assert after[1] == before[1] and all(torch.equal(after[0][k], before[0][k]) for k in before[0])
