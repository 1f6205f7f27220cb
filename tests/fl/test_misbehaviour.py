"""Each misbehaviour changes the data or the uploaded delta in the expected way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.fl.misbehaviour import (
    BEHAVIOUR_ENV,
    BEHAVIOUR_NAMES,
    BehaviourError,
    Trigger,
    apply_behaviour,
    backdoor_success_rate,
    behaviour_from_env,
    label_permutation,
    load_behaviour,
    parse_behaviour,
    trigger_of,
)

NUM_CLASSES = 10


def _digits_like(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=gen) * 0.5  # below the trigger's value 1.0 everywhere
    x[0, 0, 0, 0] = 1.0  # so the data's max, the default trigger value, is 1.0
    return x, torch.arange(n) % NUM_CLASSES


def _delta() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.full((3, 4), 0.5),
        "fc.bias": torch.tensor([1.0, -1.0, 2.0]),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.long),
    }


def test_honest_and_empty_specs_change_nothing() -> None:
    x, y = _digits_like()
    for spec in (None, "", "honest", '{"name": "honest"}'):
        plan = parse_behaviour(spec)
        assert plan.is_honest
        x2, y2 = plan.transform_data(x, y, num_classes=NUM_CLASSES, seed=3)
        assert torch.equal(x2, x) and torch.equal(y2, y)
        out = plan.transform_update(_delta(), seed=3)
        assert all(torch.equal(out[k], v) for k, v in _delta().items())


def test_label_flip_reverses_every_label_and_keeps_features() -> None:
    x, y = _digits_like()
    plan = parse_behaviour("label_flip")
    x2, y2 = plan.transform_data(x, y, num_classes=NUM_CLASSES, seed=0)
    assert torch.equal(x2, x)
    assert torch.equal(y2, NUM_CLASSES - 1 - y)
    assert torch.equal(y, torch.arange(40) % NUM_CLASSES)  # the caller's labels are untouched


def test_label_flip_random_mapping_is_a_seeded_derangement_and_fraction_limits_it() -> None:
    perm = label_permutation("random", NUM_CLASSES, seed=5)
    assert sorted(perm.tolist()) == list(range(NUM_CLASSES))
    assert all(perm[c] != c for c in range(NUM_CLASSES))
    assert torch.equal(perm, label_permutation("random", NUM_CLASSES, seed=5))
    assert label_permutation("shift", 3).tolist() == [1, 2, 0]

    x, y = _digits_like(100)
    _, y2 = parse_behaviour("label_flip:mapping=random,fraction=0.25,seed=5").transform_data(
        x, y, num_classes=NUM_CLASSES, seed=9
    )
    changed = y2 != y
    assert int(changed.sum()) == 25
    assert torch.equal(y2[changed], perm[y[changed]])


def test_backdoor_stamps_a_corner_square_on_a_fraction_and_relabels_to_target() -> None:
    x, y = _digits_like(40)
    plan = parse_behaviour("backdoor:target=3,fraction=0.3")
    x2, y2 = plan.transform_data(x, y, num_classes=NUM_CLASSES, seed=4)
    stamped = (x2[:, 0, -2:, -2:] == 1.0).all(dim=(1, 2))
    assert int(stamped.sum()) == 12  # round(0.3 * 40)
    assert bool((y2[stamped] == 3).all())
    assert torch.equal(y2[~stamped], y[~stamped])
    assert torch.equal(x2[~stamped], x[~stamped])
    # Outside the trigger square the poisoned images are unchanged.
    assert torch.equal(x2[stamped][:, 0, :6, :], x[stamped][:, 0, :6, :])
    assert trigger_of(plan) == (Trigger(size=2, value=None), 3)


def test_trigger_on_flat_inputs_square_and_not_square() -> None:
    flat_square = torch.zeros(2, 64)
    stamped = Trigger(size=2, value=1.0).apply(flat_square).view(2, 8, 8)
    assert stamped[:, -2:, -2:].eq(1.0).all() and float(stamped.sum()) == 8.0
    tabular = torch.zeros(2, 60)
    stamped_tab = Trigger(size=2, value=5.0).apply(tabular)
    assert stamped_tab[:, -4:].eq(5.0).all() and float(stamped_tab[:, :-4].abs().sum()) == 0.0


def test_model_replacement_scales_the_delta_by_gamma_or_by_clients_per_round_over_server_lr() -> None:
    delta = _delta()
    out = parse_behaviour("model_replacement:gamma=10").transform_update(delta, seed=0)
    assert torch.allclose(out["fc.weight"], delta["fc.weight"] * 10)
    assert int(out["bn.num_batches_tracked"]) == 7  # integer buffers are never scaled
    auto = parse_behaviour("model_replacement")
    derived = auto.transform_update(delta, clients_per_round=10, server_lr=0.5)
    assert torch.allclose(derived["fc.bias"], delta["fc.bias"] * 20)
    with pytest.raises(BehaviourError):
        parse_behaviour("model_replacement").transform_update(delta)


def test_noise_replaces_the_delta_with_seeded_gaussian_noise_of_the_given_std() -> None:
    big = {"w": torch.ones(20_000)}
    plan = parse_behaviour('{"name": "noise", "std": 0.5}')
    out = plan.transform_update(big, seed=1)
    assert abs(float(out["w"].mean())) < 0.02  # the honest delta (all ones) is gone
    assert float(out["w"].std()) == pytest.approx(0.5, rel=0.03)
    assert torch.equal(out["w"], plan.transform_update(big, seed=1)["w"])
    assert not torch.equal(out["w"], plan.transform_update(big, seed=2)["w"])
    added = parse_behaviour("noise:std=0.5,mode=add").transform_update(big, seed=1)
    assert float(added["w"].mean()) == pytest.approx(1.0, abs=0.02)
    assert plan.skips_training and not parse_behaviour("noise:mode=add").skips_training


def test_free_rider_uploads_zero_delta() -> None:
    plan = parse_behaviour("free_rider")
    out = plan.transform_update(_delta())
    assert float(out["fc.weight"].abs().sum()) == 0.0 and float(out["fc.bias"].abs().sum()) == 0.0
    assert out["fc.weight"].dtype == torch.float32
    assert plan.skips_training


def test_behaviours_compose_backdoor_then_scaled_update() -> None:
    plan = parse_behaviour("backdoor:target=0,fraction=0.5+model_replacement:gamma=4")
    assert [b["name"] for b in plan.describe()] == ["backdoor", "model_replacement"]
    x, y = _digits_like(10)
    _, y2 = plan.transform_data(x, y, num_classes=NUM_CLASSES, seed=0)
    assert int((y2 != y).sum()) >= 4  # five rows relabelled to 0; one of them may already be class 0
    assert torch.allclose(plan.transform_update(_delta())["fc.bias"], _delta()["fc.bias"] * 4)


def test_behaviour_comes_from_the_phone_environment() -> None:
    plan = behaviour_from_env({BEHAVIOUR_ENV: "label_flip:mapping=shift"})
    assert plan.describe() == [{"name": "label_flip", "mapping": "shift", "fraction": 1.0, "seed": 0}]
    assert behaviour_from_env({}).is_honest
    assert load_behaviour(plan) is plan


@pytest.mark.parametrize(
    "spec",
    [
        "teleport",
        "backdoor:target=-1",
        "backdoor:fraction=2",
        "backdoor:colour=red",
        "label_flip:mapping=sideways",
        "noise:std=-1",
        "noise:mode",
        "model_replacement:gamma=0",
        '{"std": 1}',
        "{not json",
    ],
)
def test_bad_specs_are_rejected_with_a_clear_error(spec: str) -> None:
    with pytest.raises(BehaviourError):
        parse_behaviour(spec)


def test_backdoor_target_outside_the_classes_is_rejected_at_training_time() -> None:
    x, y = _digits_like(10)
    with pytest.raises(BehaviourError):
        parse_behaviour("backdoor:target=10").transform_data(x, y, num_classes=NUM_CLASSES)


class _CornerDetector(nn.Module):
    """Predicts class 7 when the bottom-right pixel is bright, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x[:, 0, -1, -1] > 0.9).float()
        logits = torch.zeros(x.shape[0], NUM_CLASSES)
        logits[:, 7] = bright
        logits[:, 0] = 1 - bright
        return logits


def test_backdoor_success_rate_counts_triggered_non_target_samples_labelled_target() -> None:
    x, y = _digits_like(40)
    x[0, 0, 0, 0] = 0.2
    rate = backdoor_success_rate(_CornerDetector(), x, y, Trigger(size=2, value=1.0), target=7)
    assert rate == 1.0
    assert backdoor_success_rate(_CornerDetector(), x, y, Trigger(size=2, value=0.5), target=7) == 0.0
    with pytest.raises(ValueError):
        backdoor_success_rate(_CornerDetector(), x, torch.full((40,), 7), Trigger(), target=7)


def test_every_named_behaviour_parses_with_defaults() -> None:
    for name in BEHAVIOUR_NAMES:
        assert parse_behaviour(name).behaviours[0].name == name


def test_client_hook_contract_data_then_update_phase() -> None:
    """client.py's `_train_misbehaving` calls apply_behaviour twice with these keywords."""
    import numpy as np

    x, y = _digits_like(20)
    config = {"model": {"name": "logreg", "num_classes": NUM_CLASSES}, "clients_per_round": 5}
    rng = np.random.default_rng(0)
    spec = "label_flip+model_replacement"
    common = {"config": config, "global_weights": {}, "rng": rng}
    x2, y2, none = apply_behaviour(spec, x, y, None, phase="data", **common)
    assert none is None and torch.equal(x2, x) and torch.equal(y2, NUM_CLASSES - 1 - y)
    _, _, delta = apply_behaviour(spec, x2, y2, _delta(), phase="update", **common)
    assert delta is not None and torch.allclose(delta["fc.bias"], _delta()["fc.bias"] * 5)
    with pytest.raises(BehaviourError):
        apply_behaviour(spec, x, y, None, phase="update", **common)
    with pytest.raises(BehaviourError):
        apply_behaviour(spec, x, y, None, phase="train", **common)


def _upload(behaviour: str, label: int | None = None) -> dict[str, torch.Tensor]:
    """What a phone running FedAvg's client with this behaviour uploads (through client.py's hook)."""
    from training.fl.client import ClientTask, client_train
    from training.fl.nets import initial_weights

    spec = {"name": "logreg", "input_shape": [1, 8, 8], "num_classes": NUM_CLASSES}
    config = {"algorithm": "fedavg", "model": spec, "lr": 0.1, "epochs": 1, "batch_size": 10, "seed": 3}
    x, y = _digits_like(40)
    if label is not None:
        y = torch.full_like(y, label)
    task = ClientTask(config=config, received=initial_weights(spec, seed=0), x=x, y=y, behaviour=behaviour)
    return client_train(task).delta


def test_each_behaviour_changes_what_the_agent_uploads() -> None:
    honest = _upload("honest")
    assert float(honest["linear.weight"].abs().sum()) > 0
    scaled = _upload("model_replacement:gamma=7")
    assert all(torch.allclose(scaled[k], honest[k] * 7, atol=1e-6) for k in honest)
    assert all(float(t.abs().sum()) == 0.0 for t in _upload("free_rider").values())
    flipped = _upload("label_flip")
    poisoned = _upload("backdoor:target=0,fraction=0.5")
    noisy = _upload("noise:std=1")
    for other in (flipped, poisoned, noisy):
        assert not torch.allclose(other["linear.weight"], honest["linear.weight"], atol=1e-4)
    # A shard of class-2 samples raises class 2's bias; flipped (y -> 9 - y) it raises class 7's instead.
    assert int(_upload("honest", label=2)["linear.bias"].argmax()) == 2
    assert int(_upload("label_flip", label=2)["linear.bias"].argmax()) == 7
    assert float(noisy["linear.weight"].std()) == pytest.approx(1.0, rel=0.1)
