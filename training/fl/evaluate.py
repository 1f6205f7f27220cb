"""Accuracy and mean cross-entropy of a model on a labelled set, computed in batches (server-side
evaluation on the held-out test set, and the client's loss before/after local training).

CTR models (spec name "ctr", packed click samples) are scored as recommenders: `extra` holds "auc" (the
metric to watch) and "logloss"; `accuracy` is click/no-click accuracy at probability 0.5 (dominated by
the click base rate, so it says little) and `loss` is the log-loss (mean binary cross-entropy) — the
fields every job has, filled with their nearest CTR meaning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.fl.nets import build_model_from_spec, is_ctr_spec, set_weights

DEFAULT_EVAL_BATCH = 1024


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # fraction in [0, 1]
    loss: float  # mean cross-entropy per sample
    num_samples: int
    extra: dict[str, float] = field(default_factory=dict)  # model-specific metrics (CTR: auc, logloss)

    def as_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "num_samples": float(self.num_samples),
            **self.extra,
        }


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = DEFAULT_EVAL_BATCH
) -> Evaluation:
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                logits = model(x[start : start + batch_size])
                target = y[start : start + batch_size]
                # Summed in float64 so the mean does not depend on how the set is batched.
                total_loss += float(F.cross_entropy(logits, target, reduction="sum").double())
                correct += int((logits.argmax(dim=1) == target).sum())
    finally:
        model.train(was_training)
    return Evaluation(accuracy=correct / len(y), loss=total_loss / len(y), num_samples=len(y))


def mean_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = DEFAULT_EVAL_BATCH
) -> float:
    return evaluate(model, x, y, batch_size=batch_size).loss


def evaluate_weights(
    spec: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> Evaluation:
    """Build the model described by `spec`, load `weights` and evaluate — what the server does each round."""
    model = build_model_from_spec(spec)
    set_weights(model, weights)
    if is_ctr_spec(spec):
        return evaluate_ctr_packed(model, x, y, batch_size=batch_size)
    return evaluate(model, x, y, batch_size=batch_size)


def evaluate_ctr_packed(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = DEFAULT_EVAL_BATCH
) -> Evaluation:
    """AUC and log-loss of a CTR model on packed samples (`CTRSamples.to_xy`), see the module docstring."""
    from training.fl.ctr_model import CTRModel, CTRSamples, auc, log_loss  # noqa: PLC0415

    if not isinstance(model, CTRModel):
        raise TypeError(f"expected a CTRModel, got {type(model).__name__}")
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    samples = CTRSamples.from_xy(x, y)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat(
                [
                    model.logits(samples.subset(torch.arange(i, min(i + batch_size, len(samples)))))
                    for i in range(0, len(samples), batch_size)
                ]
            )
    finally:
        model.train(was_training)
    loss = log_loss(logits, samples.label)
    accuracy = float(((logits > 0).to(torch.float32) == samples.label).to(torch.float32).mean())
    return Evaluation(
        accuracy=accuracy,
        loss=loss,
        num_samples=len(samples),
        extra={"auc": auc(logits, samples.label), "logloss": loss},
    )
