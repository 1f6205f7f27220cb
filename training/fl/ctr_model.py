"""An embedding click-through-rate (CTR) model, its samples, and its metrics (AUC, log-loss).

This module runs on the phone too, so it needs torch only (no numpy, no sklearn).

The model scores a (user history, candidate item) pair. Every item is represented by its item embedding
concatenated with its category's embedding; the history is pooled either by a simplified DIN attention
(the candidate decides how much each history item counts) or by a masked mean, and a small MLP maps
[pooled, candidate, pooled * candidate] to a click logit.

The two embedding tables are the model's *sparse* part: their parameter names are `emb.item.weight`
and `emb.cat.weight` (see `EMBEDDING_TABLES`), which is what the submodel machinery keys on. Everything
else is dense and always travels whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID = -1  # a padded history position; never an index into an embedding table

# Embedding table (parameter prefix) -> the sample fields whose values index it.
EMBEDDING_TABLES: dict[str, tuple[str, ...]] = {
    "emb.item": ("history", "candidate"),
    "emb.cat": ("history_category", "category"),
}


@dataclass
class CTRSamples:
    """Click logs: `history`/`history_category` are [n, L] int64 padded with PAD_ID; `candidate`,
    `category` are [n] int64; `label` is [n] float32 (1 = click)."""

    history: torch.Tensor
    history_category: torch.Tensor
    candidate: torch.Tensor
    category: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, index: torch.Tensor) -> CTRSamples:
        return CTRSamples(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat name -> tensor mapping, ready for safetensors."""
        return {prefix + f.name: getattr(self, f.name).contiguous() for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> CTRSamples:
        """Inverse of `to_tensors`, with the shape/dtype checks a shard read from disk deserves."""
        values = {f.name: tensors[prefix + f.name] for f in fields(cls)}
        samples = cls(**values)
        problems = samples.problems()
        if problems:
            raise ValueError("malformed CTR samples: " + "; ".join(problems))
        return samples

    def to_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack into the (x, y) shard every client algorithm receives: x = int64 [n, 2L + 2] holding
        history | history_category | candidate | category, y = int64 click labels."""
        x = torch.cat(
            [self.history, self.history_category, self.candidate[:, None], self.category[:, None]], 1
        )
        return x.contiguous(), self.label.round().to(torch.int64)

    @classmethod
    def from_xy(cls, x: torch.Tensor, y: torch.Tensor) -> CTRSamples:
        """Inverse of `to_xy` (checks the packing)."""
        if x.dtype != torch.int64 or x.dim() != 2 or x.shape[1] < 4 or x.shape[1] % 2 != 0:
            raise ValueError(f"packed CTR samples must be int64 [n, 2L + 2], got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be [n] with n={x.shape[0]}, got {tuple(y.shape)}")
        length = (x.shape[1] - 2) // 2
        samples = cls(
            history=x[:, :length],
            history_category=x[:, length : 2 * length],
            candidate=x[:, 2 * length],
            category=x[:, 2 * length + 1],
            label=y.to(torch.float32),
        )
        problems = samples.problems()
        if problems:
            raise ValueError("malformed CTR samples: " + "; ".join(problems))
        return samples

    def problems(self) -> list[str]:
        n = len(self)
        out: list[str] = []
        for name in ("history", "history_category"):
            t = getattr(self, name)
            if t.dim() != 2 or t.shape[0] != n or t.dtype != torch.int64:
                out.append(f"{name} must be int64 [n, L] with n={n}, got {t.dtype} {tuple(t.shape)}")
        if self.history.shape != self.history_category.shape:
            out.append("history and history_category shapes differ")
        for name in ("candidate", "category"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != n or t.dtype != torch.int64:
                out.append(f"{name} must be int64 [n] with n={n}, got {t.dtype} {tuple(t.shape)}")
        if self.label.dim() != 1 or self.label.dtype != torch.float32:
            out.append(f"label must be float32 [n], got {self.label.dtype} {tuple(self.label.shape)}")
        elif n and not bool(((self.label == 0) | (self.label == 1)).all()):
            out.append("labels must be 0 or 1")
        if not out:
            for name in ("history", "history_category"):
                if bool((getattr(self, name) < PAD_ID).any()):
                    out.append(f"{name} has negative ids other than the padding id {PAD_ID}")
            for name in ("candidate", "category"):
                if bool((getattr(self, name) < 0).any()):
                    out.append(f"{name} has negative ids")
        return out


@dataclass(frozen=True)
class CTRModelConfig:
    """Everything a phone needs to rebuild the architecture (sent in the round's JSON config)."""

    emb_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    attention_hidden: int = 16
    pooling: str = "attention"  # attention | mean
    init_std: float = 0.05

    def to_json(self) -> dict[str, object]:
        return {
            "emb_dim": self.emb_dim,
            "hidden": list(self.hidden),
            "attention_hidden": self.attention_hidden,
            "pooling": self.pooling,
            "init_std": self.init_std,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> CTRModelConfig:
        hidden = raw.get("hidden", [64, 32])
        if not isinstance(hidden, Sequence) or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a list of positive ints, got {hidden!r}")
        pooling = str(raw.get("pooling", "attention"))
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {pooling!r}")
        emb_dim = raw.get("emb_dim", 16)
        att = raw.get("attention_hidden", 16)
        if not isinstance(emb_dim, int) or emb_dim <= 0 or not isinstance(att, int) or att <= 0:
            raise ValueError("emb_dim and attention_hidden must be positive ints")
        init_std = raw.get("init_std", 0.05)
        if not isinstance(init_std, int | float) or init_std <= 0:
            raise ValueError("init_std must be a positive number")
        return cls(emb_dim, tuple(hidden), att, pooling, float(init_std))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CTRModel(nn.Module):
    """Item + category embeddings, history pooling (DIN-lite attention or mean), MLP -> logit.

    `num_items`/`num_categories` are the table sizes: the full vocabulary on the server, or only the
    submodel's rows on a phone (the phone's samples are then remapped to local row numbers).
    """

    def __init__(self, num_items: int, num_categories: int, config: CTRModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or CTRModelConfig()
        d = self.config.emb_dim
        item_table, cat_table = nn.Embedding(num_items, d), nn.Embedding(num_categories, d)
        self.emb = nn.ModuleDict({"item": item_table, "cat": cat_table})
        feat = 2 * d
        self.att: nn.Sequential | None = None
        if self.config.pooling == "attention":
            self.att = _mlp([3 * feat, self.config.attention_hidden, 1])
        self.mlp = _mlp([3 * feat, *self.config.hidden, 1])
        for table in (item_table, cat_table):
            nn.init.normal_(table.weight, std=self.config.init_std)

    def _represent(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        # Padded ids are clamped to row 0 for the lookup; callers zero those positions out with a mask,
        # so row 0 receives no gradient from padding.
        item_emb = self.emb["item"](items.clamp_min(0))
        cat_emb = self.emb["cat"](categories.clamp_min(0))
        return torch.cat([item_emb, cat_emb], dim=-1)

    def forward(
        self,
        history: torch.Tensor,
        history_category: torch.Tensor,
        candidate: torch.Tensor,
        category: torch.Tensor,
    ) -> torch.Tensor:
        mask = (history >= 0) & (history_category >= 0)  # [n, L]
        maskf = mask.unsqueeze(-1).to(torch.float32)
        hist = self._represent(history, history_category) * maskf  # [n, L, 2d]
        cand = self._represent(candidate, category)  # [n, 2d]
        if self.att is not None:
            cand_l = cand.unsqueeze(1).expand_as(hist)
            scores = self.att(torch.cat([hist, cand_l, hist * cand_l], dim=-1)).squeeze(-1)
            # A large negative (not -inf) keeps an all-padding row finite: its weights become uniform,
            # and multiplying by the mask then makes its pooled vector exactly zero.
            weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask.to(torch.float32)
            pooled = (weights.unsqueeze(-1) * hist).sum(dim=1)
        else:
            pooled = hist.sum(dim=1) / maskf.sum(dim=1).clamp_min(1.0)
        return self.mlp(torch.cat([pooled, cand, pooled * cand], dim=-1)).squeeze(-1)

    def logits(self, samples: CTRSamples) -> torch.Tensor:
        return self(samples.history, samples.history_category, samples.candidate, samples.category)


def build_ctr_model(
    num_items: int, num_categories: int, config: CTRModelConfig | None = None, seed: int = 0
) -> CTRModel:
    """A freshly initialised model; the seed makes two runs (e.g. FedSubAvg vs FedAvg) start identical."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CTRModel(num_items, num_categories, config)
    finally:
        torch.random.set_rng_state(gen_state)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula; tied scores get average ranks.

    Returns NaN when only one class is present (AUC is undefined there)."""
    scores = scores.detach().reshape(-1).to(torch.float64)
    positive = labels.detach().reshape(-1) > 0.5
    n_pos = int(positive.sum())
    n_neg = int(positive.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # 1-based rank of each tie group's last member
    average_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of the click probabilities sigmoid(logits)."""
    return float(F.binary_cross_entropy_with_logits(logits.detach().float(), labels.float()))


@torch.no_grad()
def evaluate_ctr(model: CTRModel, samples: CTRSamples, batch_size: int = 4096) -> dict[str, float]:
    """AUC and log-loss of `model` on `samples` (ids must be valid row numbers for its tables)."""
    model.eval()
    chunks = [
        model.logits(samples.subset(torch.arange(i, min(i + batch_size, len(samples)))))
        for i in range(0, len(samples), batch_size)
    ]
    logits = torch.cat(chunks) if chunks else torch.zeros(0)
    return {"auc": auc(logits, samples.label), "logloss": log_loss(logits, samples.label)}


@dataclass(frozen=True)
class LocalTrainingConfig:
    """Local training settings. Adam without weight decay moves only rows that received a gradient,
    so training the full model and training the submodel give the same rows (apples to apples)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "adam"  # adam | sgd
    # DIN's mini-batch aware regularisation: L2 on the embedding rows a batch uses (never on the whole
    # table, so untouched rows stay put and submodel training equals full-model training).
    l2_emb: float = 0.0
    max_steps: int | None = None  # straggler budget
    deadline_s: float | None = None  # straggler: stop once this much time has passed

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> LocalTrainingConfig:
        epochs, batch, lr = raw.get("epochs", 1), raw.get("batch_size", 32), raw.get("lr", 0.01)
        optimizer = str(raw.get("optimizer", "adam"))
        l2_emb = raw.get("l2_emb", 0.0)
        if not isinstance(l2_emb, int | float) or l2_emb < 0:
            raise ValueError("l2_emb must be a number >= 0")
        if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch, int) or batch < 1:
            raise ValueError("epochs and batch_size must be positive ints")
        if not isinstance(lr, int | float) or not lr > 0:
            raise ValueError("lr must be a positive number")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        max_steps, deadline_s = raw.get("max_steps"), raw.get("deadline_s")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError("max_steps must be a positive int when given")
        if deadline_s is not None and (not isinstance(deadline_s, int | float) or deadline_s < 0):
            raise ValueError("deadline_s must be a number >= 0 when given")
        return cls(
            epochs,
            batch,
            float(lr),
            optimizer,
            float(l2_emb),
            max_steps,
            None if deadline_s is None else float(deadline_s),
        )


def batch_embedding_l2(model: CTRModel, batch: CTRSamples) -> torch.Tensor:
    """Sum of squared norms of the distinct embedding rows `batch` uses, divided by the batch size."""
    total = torch.zeros(())
    for table, names in EMBEDDING_TABLES.items():
        ids = torch.cat([getattr(batch, f).reshape(-1) for f in names])
        ids = torch.unique(ids[ids != PAD_ID])
        weight = model.get_parameter(table + ".weight")
        total = total + weight[ids].pow(2).sum()
    return total / max(len(batch), 1)


StepCallback = Callable[[int, int, int, float], None]  # (epoch, step, planned steps, minibatch loss)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class LocalOptimizer:
    """Adam with torch's defaults and no weight decay, or plain SGD — written out, step for step as
    torch.optim's single-tensor code does it (tests compare the two). torch.optim's optimizers import
    torch._dynamo when first used: 1.4 s of CPU in every agent run, since each run is a new process,
    where the whole local training of a CTR submodel takes about 0.1 s."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, kind: str = "adam") -> None:
        if kind not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")
        self.params = list(params)
        self.lr = lr
        self.kind = kind
        self.steps = 0
        self.moments = (
            [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params] if kind == "adam" else []
        )

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.kind == "sgd":
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-self.lr)
            return
        beta1, beta2 = ADAM_BETAS
        step_size = self.lr / (1 - beta1**self.steps)
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        for p, (exp_avg, exp_avg_sq) in zip(self.params, self.moments, strict=True):
            if p.grad is None:
                continue
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def train_ctr(
    model: CTRModel,
    samples: CTRSamples,
    config: LocalTrainingConfig,
    seed: int = 0,
    *,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, float]:
    """Minibatch training on `samples`. Stops early after `config.max_steps` steps or once
    `config.deadline_s` seconds have passed (stragglers). Returns train_loss (mean over the last epoch
    trained), steps, planned_steps and completed (1.0 = all planned steps done)."""
    model.train()
    optimizer = LocalOptimizer(list(model.parameters()), config.lr, config.optimizer)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(samples) // config.batch_size)
    planned = per_epoch * config.epochs
    if config.max_steps is not None:
        planned = min(planned, config.max_steps)
    started = clock()
    steps, last_loss, out_of_time = 0, float("nan"), False
    for epoch in range(1, config.epochs + 1):
        if steps >= planned or out_of_time:
            break
        order = torch.randperm(len(samples), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(samples), config.batch_size):
            batch = samples.subset(order[start : start + config.batch_size])
            loss = F.binary_cross_entropy_with_logits(model.logits(batch), batch.label)
            if config.l2_emb > 0:
                loss = loss + config.l2_emb * batch_embedding_l2(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            total += value * len(batch)
            seen += len(batch)
            steps += 1
            if on_step is not None:
                on_step(epoch, steps, planned, value)
            out_of_time = config.deadline_s is not None and clock() - started >= config.deadline_s
            if steps >= planned or out_of_time:
                break
        last_loss = total / max(seen, 1)
    return {
        "train_loss": last_loss,
        "num_samples": float(len(samples)),
        "steps": float(steps),
        "planned_steps": float(planned),
        "completed": 1.0 if steps == per_epoch * config.epochs else 0.0,
    }
