import pytest
import torch

from training.fl import nets


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("logreg", (60,), {}),
        ("mlp", (1, 8, 8), {"hidden": [32, 16]}),
        ("mlp", (60,), {}),
        ("cnn", (1, 8, 8), {}),
    ],
)
def test_models_map_inputs_to_class_scores(name, shape, kwargs):
    model = nets.build_model(name, input_shape=shape, num_classes=10, seed=0, **kwargs)
    out = model(torch.zeros(4, *shape))
    assert out.shape == (4, 10)


def test_seed_fixes_initial_weights_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = nets.get_weights(nets.build_model("mlp", input_shape=(64,), num_classes=10, seed=7))
    after = torch.rand(1)
    b = nets.get_weights(nets.build_model("mlp", input_shape=(64,), num_classes=10, seed=7))
    c = nets.get_weights(nets.build_model("mlp", input_shape=(64,), num_classes=10, seed=8))
    assert before.item() == after.item()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.1.weight"], c["layers.1.weight"])


def test_mlp_layer_sizes_follow_hidden():
    model = nets.build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[200, 200])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["layers.1.weight"] == (200, 64)
    assert shapes["layers.5.weight"] == (10, 200)
    assert nets.count_parameters(model) == 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10


def test_spec_round_trip_builds_same_architecture():
    spec = nets.model_spec_for("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(50,))
    assert spec == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "hidden": [50]}
    w1 = nets.initial_weights(spec, seed=3)
    w2 = nets.get_weights(nets.build_model_from_spec(spec, seed=3))
    assert list(w1) == list(w2) and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert all(v.dtype == torch.float32 for v in w1.values())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "nope", "input_shape": [4], "num_classes": 2}, "unknown model"),
        ({"name": "mlp", "num_classes": 2}, "missing input_shape"),
        ({"name": "mlp", "input_shape": [4], "num_classes": 2, "bogus": 1}, "bogus"),
        ({"name": "cnn", "input_shape": [60], "num_classes": 10}, "image inputs"),
        ({"name": "mlp", "input_shape": "64", "num_classes": 10}, "list of integers"),
        ({"name": "mlp", "input_shape": [64], "num_classes": 1}, "at least 2"),
    ],
)
def test_bad_specs_are_rejected_with_a_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        nets.build_model_from_spec(spec)
