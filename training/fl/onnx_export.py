"""The final model for phones (and anything else) to run: a model spec + weights as an ONNX file, checked.

`export_checked(spec, weights, x)` exports and then proves the file right: onnxruntime loads it and runs
it on `x` (the job's test set), and its outputs must match PyTorch's within `tolerance` (max absolute
difference); only then are the bytes returned, ready to be written next to the safetensors checkpoint.

The file's contract: one input `x` — float32 [batch, *input_shape] (the CTR model: int64 [batch, 2L + 2],
the packed samples of `CTRSamples.to_xy`) — and one output `logits`: float32 [batch, num_classes] (the
CTR model: [batch], the click logit). The batch dimension is dynamic. The model spec rides along in the
file's metadata (`fedfleet.model_spec`), so the file says what it is.

The exporter is PyTorch's TorchScript-based one (`dynamo=False`): it needs only the `onnx` package, while
the torch.export-based default needs onnxscript as well, and traces these small feed-forward models
exactly. torch deprecates it with a warning; the check below is what says the export is right.
onnx and onnxruntime are imported when a model is exported, never on a phone.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.fl.nets import build_model_from_spec, is_ctr_spec, set_weights
from training.fl.wire import write_bytes_atomic

ONNX_OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "logits"
SPEC_METADATA_KEY = "fedfleet.model_spec"
DEFAULT_TOLERANCE = 1e-4
CHECK_BATCH = 1024


class OnnxExportError(ValueError):
    """The model could not be exported, or the exported file does not compute what PyTorch computes."""


@dataclass(frozen=True)
class OnnxCheck:
    """How the ONNX file's outputs compare with PyTorch's on the check samples."""

    samples: int
    max_abs_diff: float
    prediction_agreement: float  # share of samples with the same predicted class (CTR: click or not)
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "prediction_agreement": self.prediction_agreement,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


class PackedCTR(nn.Module):
    """The CTR model on packed samples (one int64 tensor), the only input an ONNX runtime is handed."""

    def __init__(self, model: nn.Module, history_len: int) -> None:
        super().__init__()
        self.model = model
        self.history_len = history_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = self.history_len
        return self.model(x[:, :length], x[:, length : 2 * length], x[:, 2 * length], x[:, 2 * length + 1])


def torch_module(spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """The trained model in eval mode, taking the single input the ONNX file takes."""
    model = build_model_from_spec(spec)
    try:
        set_weights(model, weights)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped parameters
        raise OnnxExportError(f"the weights do not fit the model: {exc}") from None
    if is_ctr_spec(spec):
        model = PackedCTR(model, (int(spec["input_shape"][0]) - 2) // 2)
    return model.eval()


def input_dtype(spec: Mapping[str, Any]) -> torch.dtype:
    return torch.int64 if is_ctr_spec(spec) else torch.float32


def export_onnx(spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> bytes:
    """The ONNX file's bytes (unchecked: use `export_checked`)."""
    import onnx  # noqa: PLC0415 - server only, and only when a model is exported

    module = torch_module(spec, weights)
    example = torch.zeros((2, *[int(d) for d in spec["input_shape"]]), dtype=input_dtype(spec))
    with tempfile.TemporaryDirectory(prefix="fedfleet-onnx-") as scratch:
        target = Path(scratch) / "model.onnx"  # torch's signature takes a path, not a buffer
        try:
            with warnings.catch_warnings():
                # The TorchScript exporter's deprecation notice, on every call; see the module docstring.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    module,
                    (example,),
                    target,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=ONNX_OPSET,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure (an op a plug-in uses) is a reason
            raise OnnxExportError(f"model {spec.get('name')!r} cannot be exported to ONNX: {exc}") from None
        proto = onnx.load(str(target))
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_METADATA_KEY, json.dumps(dict(spec), sort_keys=True)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"the exported model is not valid ONNX: {exc}") from None
    return proto.SerializeToString()


def check_onnx(
    data: bytes,
    spec: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxCheck:
    """Run the ONNX file in onnxruntime and the model in PyTorch on `x`, batch by batch, and compare."""
    import onnxruntime  # noqa: PLC0415 - server only

    if len(x) == 0:
        raise OnnxExportError("no samples to check the export on")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the machines are shared; a check is small
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxExportError(f"onnxruntime cannot load the exported model: {exc}") from None
    module = torch_module(spec, weights)
    worst, agree = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), CHECK_BATCH):
            batch = x[start : start + CHECK_BATCH].to(input_dtype(spec))
            expected = module(batch)
            (got_array,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
            got = torch.from_numpy(got_array)
            if got.shape != expected.shape:
                raise OnnxExportError(
                    f"ONNX output has shape {tuple(got.shape)}, PyTorch's {tuple(expected.shape)}"
                )
            worst = max(worst, float((got - expected).abs().max()))
            agree += int((_predictions(got) == _predictions(expected)).sum())
    return OnnxCheck(len(x), worst, agree / len(x), tolerance)


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1) if logits.dim() == 2 else (logits > 0).long()


def export_checked(
    spec: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[bytes, OnnxCheck]:
    """Export, then check on `x`; OnnxExportError when outputs differ by more than `tolerance`."""
    data = export_onnx(spec, weights)
    check = check_onnx(data, spec, weights, x, tolerance=tolerance)
    if not check.ok:
        raise OnnxExportError(
            f"the ONNX export differs from PyTorch by up to {check.max_abs_diff:.3g} "
            f"(tolerance {tolerance:g}) on {check.samples} samples"
        )
    return data, check


def save_onnx(
    path: Path,
    spec: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxCheck:
    """`export_checked`, written to `path` atomically (nothing is written when the check fails)."""
    data, check = export_checked(spec, weights, x, tolerance=tolerance)
    write_bytes_atomic(Path(path), data)
    return check
