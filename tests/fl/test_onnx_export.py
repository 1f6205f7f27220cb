"""ONNX export of a trained model: onnxruntime loads the file and its outputs match PyTorch's on the test
set, for every built-in model (logreg, mlp, cnn, ctr) and the example plug-in's."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from training.fl import nets
from training.fl.datasets import load_dataset
from training.fl.onnx_export import (
    SPEC_METADATA_KEY,
    OnnxExportError,
    check_onnx,
    export_checked,
    export_onnx,
    save_onnx,
    torch_module,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def trained(spec, splits, steps=150):
    """A few hundred SGD steps on the training set: weights a job could have produced."""
    model = nets.build_model_from_spec(spec, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(splits.train), (32,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(splits.train.x[batch]), splits.train.y[batch]).backward()
        optimizer.step()
    return nets.get_weights(model)


@pytest.mark.parametrize(
    ("name", "params"),
    [("logreg", {}), ("mlp", {}), ("cnn", {}), ("mlp", {"hidden": [32]}), ("residual_mlp", {"width": 24})],
)
def test_the_export_matches_pytorch_on_the_test_set(name, params, digits):
    spec = nets.model_spec_for(name, input_shape=digits.feature_shape, num_classes=10, **params)
    weights = trained(spec, digits)
    data, check = export_checked(spec, weights, digits.test.x)
    assert check.ok and check.samples == len(digits.test) == 360
    assert check.max_abs_diff <= 1e-4 and check.prediction_agreement == 1.0
    # The exported model is the trained one: its accuracy is PyTorch's, and well above chance.
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"x": digits.test.x.numpy()})
    correct = int((logits.argmax(1) == digits.test.y.numpy()).sum())
    with torch.no_grad():
        expected = nets.build_model_from_spec(spec)
        nets.set_weights(expected, weights)
        torch_correct = int((expected(digits.test.x).argmax(1) == digits.test.y).sum())
    assert correct == torch_correct > 0.5 * len(digits.test)


def test_the_ctr_model_exports_on_packed_samples():
    splits = load_dataset("recsys", seed=0, num_items=3000, num_clients=3, samples_per_user=100)
    spec = nets.model_spec_for("ctr", input_shape=splits.feature_shape, num_classes=2, **splits.model_kwargs)
    weights = {k: v + 0.05 * torch.randn_like(v) for k, v in nets.initial_weights(spec, seed=0).items()}
    data, check = export_checked(spec, weights, splits.test.x)
    assert check.ok and check.samples == len(splits.test) and check.prediction_agreement == 1.0
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int64)"
    (logits,) = session.run(["logits"], {"x": splits.test.x[:5].numpy()})
    assert logits.shape == (5,)  # one click logit per sample


def test_the_file_has_a_dynamic_batch_and_carries_its_spec(digits):
    spec = nets.model_spec_for("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[4, 8], fc_width=16)
    weights = nets.initial_weights(spec, seed=1)
    data = export_onnx(spec, weights)
    proto = onnx.load_from_string(data)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata[SPEC_METADATA_KEY]) == spec
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    module = torch_module(spec, weights)
    for batch in (1, 7):
        x = digits.test.x[:batch]
        (out,) = session.run(["logits"], {"x": x.numpy()})
        np.testing.assert_allclose(out, module(x).detach().numpy(), atol=1e-5)


def test_a_file_that_computes_something_else_fails_the_check(tmp_path, digits):
    spec = nets.model_spec_for("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    exported = export_onnx(spec, nets.initial_weights(spec, seed=1))
    check = check_onnx(exported, spec, nets.initial_weights(spec, seed=2), digits.test.x)
    assert not check.ok and check.max_abs_diff > 1e-2 and check.prediction_agreement < 1.0
    with pytest.raises(OnnxExportError, match=r"differs from PyTorch by up to .* \(tolerance -1\)"):
        export_checked(spec, nets.initial_weights(spec, seed=1), digits.test.x, tolerance=-1)
    target = tmp_path / "model.onnx"
    with pytest.raises(OnnxExportError):
        save_onnx(target, spec, nets.initial_weights(spec, seed=1), digits.test.x, tolerance=-1)
    assert not target.exists()  # nothing written that was not checked
    assert save_onnx(target, spec, nets.initial_weights(spec, seed=1), digits.test.x).ok
    assert onnx.load(str(target)).graph.input[0].name == "x"


def test_weights_that_do_not_fit_the_spec_are_refused(digits):
    spec = nets.model_spec_for("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    other = nets.initial_weights({**spec, "hidden": [17]}, seed=0)
    with pytest.raises(OnnxExportError, match="the weights do not fit the model"):
        export_onnx(spec, other)
    with pytest.raises(OnnxExportError, match="no samples"):
        check_onnx(export_onnx(spec, nets.initial_weights(spec, seed=0)), spec, {}, digits.test.x[:0])
