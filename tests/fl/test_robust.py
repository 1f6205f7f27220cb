"""Robust aggregators on fixed tensors, checked against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from training.fl.robust import (
    AGGREGATOR_NAMES,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormClipping,
    TrimmedMean,
    krum_scores,
    krum_select,
    make_aggregator,
    trim_count,
)


def _delta(*values: float) -> dict[str, torch.Tensor]:
    """A two-tensor delta so flattening/unflattening across names is exercised too."""
    return {"w": torch.tensor(values[:-1], dtype=torch.float32), "b": torch.tensor([float(values[-1])])}


def test_median_is_the_middle_value_per_coordinate_and_averages_the_two_middles() -> None:
    deltas = [_delta(1, 10, 0), _delta(2, 30, 5), _delta(9, 20, 1)]
    out = CoordinateMedian()(deltas, [1, 1, 1])
    assert out["w"].tolist() == [2.0, 20.0]
    assert out["b"].tolist() == [1.0]
    # Even count: (2 + 3) / 2, not torch.median's lower middle value 2.
    even = CoordinateMedian()([_delta(1, 0), _delta(2, 0), _delta(3, 0), _delta(100, 0)], [1, 1, 1, 1])
    assert even["w"].tolist() == [2.5]


def test_trimmed_mean_drops_beta_fraction_at_each_end() -> None:
    # Five clients, beta 0.2 -> drop one at each end per coordinate.
    column_a = [1, 2, 3, 4, 100]  # keep 2, 3, 4 -> 3
    column_b = [-50, 0, 6, 3, 9]  # sorted -50, 0, 3, 6, 9 -> keep 0, 3, 6 -> 3
    deltas = [_delta(a, b) for a, b in zip(column_a, column_b, strict=True)]
    out = TrimmedMean(beta=0.2)(deltas, [10, 1, 1, 1, 1])  # counts are ignored by design
    assert out["w"].tolist() == [3.0]
    assert out["b"].tolist() == [3.0]
    assert trim_count(5, 0.2) == 1
    assert trim_count(4, 0.1) == 0
    with pytest.raises(ValueError):
        TrimmedMean(beta=0.5)


def test_norm_clipping_scales_long_deltas_to_the_bound_then_weights_by_samples() -> None:
    deltas = [_delta(3, 4), _delta(0.3, 0.4)]  # norms 5 and 0.5
    out = NormClipping(max_norm=1.0)(deltas, [1, 3])
    # (0.6, 0.8) * 1/4 + (0.3, 0.4) * 3/4 = (0.375, 0.5)
    assert out["w"].tolist() == pytest.approx([0.375])
    assert out["b"].tolist() == pytest.approx([0.5])


def test_krum_scores_and_choice_by_hand() -> None:
    # 1-D points 0, 1, 2, 10 with f = 1: n - f - 2 = 1 nearest neighbour.
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    assert krum_scores(points, num_byzantine=1).tolist() == [1.0, 1.0, 1.0, 64.0]
    assert krum_select(points, num_byzantine=1) == [0]  # tie on 1.0 broken by index
    # f = 0: two nearest. 0: 1+4=5, 1: 1+1=2, 2: 1+4=5, 10: 64+81=145.
    assert krum_scores(points, num_byzantine=0).tolist() == [5.0, 2.0, 5.0, 145.0]
    deltas = [_delta(float(p), 0.0) for p in (0, 1, 2, 10)]
    krum = Krum(num_byzantine=0)
    out = krum(deltas, [1, 1, 1, 1])
    assert krum.last_selected == [1]
    assert out["w"].tolist() == [1.0]


def test_multi_krum_averages_the_best_m_by_sample_count() -> None:
    deltas = [_delta(float(p), 0.0) for p in (0, 1, 2, 10)]
    multi = MultiKrum(num_byzantine=0, num_selected=3)
    out = multi(deltas, [1, 1, 2, 1])
    assert sorted(multi.last_selected) == [0, 1, 2]
    assert out["w"].tolist() == pytest.approx([(0 * 1 + 1 * 1 + 2 * 2) / 4])


def _honest_round(seed: int = 0, n_clients: int = 7) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(20, generator=gen)
    return [{"w": centre + 0.1 * torch.randn(20, generator=gen)} for _ in range(n_clients)]


@pytest.mark.parametrize("name", [n for n in AGGREGATOR_NAMES if n != "mean"])
def test_robust_rules_bound_a_single_update_scaled_by_100_while_the_mean_does_not(name: str) -> None:
    honest = _honest_round()
    attacked = [dict(d) for d in honest]
    attacked[0] = {"w": honest[0]["w"] * 100}
    counts = [10] * len(honest)
    reference = make_aggregator("mean")(honest, counts)["w"]
    honest_norm = float(reference.norm())

    # Trimmed mean needs beta * n >= 1 to drop anything: 0.2 * 7 -> one value dropped at each end.
    params = {"clip": {"max_norm": 2 * honest_norm}, "trimmed_mean": {"beta": 0.2}}.get(name, {})
    robust = make_aggregator(name, params)(attacked, counts)["w"]
    mean = make_aggregator("mean")(attacked, counts)["w"]

    assert float((mean - reference).norm()) > 10 * honest_norm  # the attack works on plain averaging
    assert float((robust - reference).norm()) < 0.5 * honest_norm  # and is bounded by the robust rule


def test_make_aggregator_validates_names_and_parameters() -> None:
    assert set(AGGREGATOR_NAMES) == {"mean", "clip", "median", "trimmed_mean", "krum", "multi_krum"}
    assert isinstance(make_aggregator("trimmed_mean", {"beta": 0.25}), TrimmedMean)
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("average")
    with pytest.raises(ValueError, match="does not take"):
        make_aggregator("median", {"beta": 0.1})
    with pytest.raises(ValueError):
        make_aggregator("clip", {"max_norm": 0})


def test_mismatched_deltas_are_rejected() -> None:
    with pytest.raises(ValueError):
        CoordinateMedian()([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], [1, 1])
    with pytest.raises(ValueError):
        CoordinateMedian()([{"w": torch.zeros(2)}], [1, 1])
    with pytest.raises(ValueError):
        CoordinateMedian()([], [])


def test_non_float_tensors_pass_through_and_dtypes_are_kept() -> None:
    deltas = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3, dtype=torch.long)},
        {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(5, dtype=torch.long)},
    ]
    out = CoordinateMedian()(deltas, [1, 1])
    assert out["w"].dtype == torch.float32
    assert out["w"].tolist() == [2.0, 3.0]
    assert int(out["n"]) == 3


@pytest.mark.parametrize("name", [n for n in AGGREGATOR_NAMES if n != "mean"])
def test_fedavg_runs_with_each_robust_aggregator_from_the_job_registry(name: str) -> None:
    """The FL core builds FedAvg with `aggregator`/`aggregator_params` job parameters; a ×100 update from
    one client moves the model far less than under plain averaging."""
    from training.fl.aggregators import aggregator_names
    from training.fl.registry import make_strategy
    from training.fl.strategy import ClientUpdate, ServerState

    assert name in aggregator_names()
    honest = _honest_round(seed=1)
    uploads = [{"w": d["w"] * (100 if i == 0 else 1)} for i, d in enumerate(honest)]
    updates = [ClientUpdate(f"c{i}", 10, u) for i, u in enumerate(uploads)]
    state = ServerState(weights={"w": torch.zeros(20)})
    params = {"clip": {"max_norm": 10.0}, "trimmed_mean": {"beta": 0.2}}.get(name, {})
    robust = make_strategy("fedavg", {"aggregator": name, "aggregator_params": params})
    plain = make_strategy("fedavg")
    robust_state, _ = robust.aggregate(state, 1, updates, [])
    plain_state, _ = plain.aggregate(state, 1, updates, [])
    reference = make_aggregator("mean")(honest, [10] * len(honest))["w"]
    assert float((robust_state.weights["w"] - reference).norm()) < 0.5 * float(reference.norm())
    assert float((plain_state.weights["w"] - reference).norm()) > 10 * float(reference.norm())
