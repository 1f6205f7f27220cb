"""The recommendation-log generator and the CTR model (data, metrics, padding, training knobs)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from training.fl.ctr_model import (
    PAD_ID,
    CTRModelConfig,
    CTRSamples,
    LocalOptimizer,
    LocalTrainingConfig,
    auc,
    build_ctr_model,
    evaluate_ctr,
    log_loss,
    train_ctr,
)
from training.fl.recsys_data import RecsysConfig, generate_recsys
from training.fl.submodel import index_sets_of, union_of

REPO = Path(__file__).resolve().parents[2]
SMALL = RecsysConfig(num_items=5_000, num_categories=50, num_clients=6, samples_per_user=200, seed=3)


@pytest.fixture(scope="module")
def default_data():
    return generate_recsys(RecsysConfig())


def test_default_generation_is_fast_and_sized_as_configured(default_data) -> None:
    start = time.perf_counter()
    data = generate_recsys(RecsysConfig(seed=1))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"20 clients x 300 samples over 100k items took {elapsed:.2f}s"
    assert len(data.clients) == 20
    assert all(len(c) == 300 for c in data.clients)
    assert len(data.test) == 20 * 100
    assert data.clients[0].history.shape == (300, 20)


def test_same_seed_same_logs_other_seed_other_logs() -> None:
    a, b = generate_recsys(SMALL), generate_recsys(SMALL)
    c = generate_recsys(RecsysConfig(**{**SMALL.__dict__, "seed": 4}))
    for x, y in zip(a.clients, b.clients, strict=True):
        assert torch.equal(x.history, y.history) and torch.equal(x.label, y.label)
    assert not torch.equal(a.clients[0].candidate, c.clients[0].candidate)


def test_a_client_touches_a_few_hundred_of_100k_items(default_data) -> None:
    per_client = [index_sets_of(c)["emb.item"].numel() for c in default_data.clients]
    assert all(50 <= n <= 600 for n in per_client), per_client
    union = union_of([index_sets_of(c) for c in default_data.clients])["emb.item"].numel()
    assert union < 0.1 * default_data.num_items


def test_item_popularity_is_heavy_tailed(default_data) -> None:
    popularity = torch.from_numpy(default_data.world.popularity)
    top_1_percent = torch.topk(popularity, default_data.num_items // 100).values.sum()
    assert float(top_1_percent) > 0.4  # Zipf(1) over 100k items: the head dominates
    candidates = torch.cat([c.candidate for c in default_data.clients])
    assert torch.unique(candidates).numel() < 0.5 * candidates.numel()  # popular items repeat


def test_histories_are_padded_at_the_end_with_matching_categories(default_data) -> None:
    cfg = default_data.config
    item_category = torch.from_numpy(default_data.world.item_category)
    for samples in default_data.clients[:3]:
        valid = samples.history != PAD_ID
        lengths = valid.sum(dim=1)
        assert int(lengths.min()) >= cfg.min_history_len and int(lengths.max()) <= cfg.history_len
        # Valid positions form a prefix: once padded, padded to the end.
        assert torch.equal(valid, torch.arange(cfg.history_len)[None, :] < lengths[:, None])
        assert torch.equal(samples.history_category == PAD_ID, ~valid)
        assert torch.equal(samples.history_category[valid], item_category[samples.history[valid]])
        assert torch.equal(samples.category, item_category[samples.candidate])


def test_labels_follow_a_learnable_latent_model(default_data) -> None:
    assert auc(default_data.test_oracle_prob, default_data.test.label) > 0.8
    click_rate = float(torch.cat([c.label for c in default_data.clients]).mean())
    assert 0.2 < click_rate < 0.8


def test_invalid_config_is_rejected_with_reasons() -> None:
    with pytest.raises(ValueError, match="min_history_len"):
        generate_recsys(RecsysConfig(min_history_len=30, history_len=20))
    with pytest.raises(ValueError, match="explore_fraction"):
        generate_recsys(RecsysConfig(explore_fraction=1.5))


def test_samples_round_trip_through_tensors_and_reject_malformed() -> None:
    samples = generate_recsys(SMALL).clients[0]
    again = CTRSamples.from_tensors(samples.to_tensors("shard."), "shard.")
    assert torch.equal(again.history, samples.history) and torch.equal(again.label, samples.label)
    broken = samples.to_tensors()
    broken["candidate"] = broken["candidate"].to(torch.int32)
    with pytest.raises(ValueError, match="candidate must be int64"):
        CTRSamples.from_tensors(broken)


def test_auc_matches_sklearn_with_ties_and_edge_cases() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (500,), generator=gen).float()  # many ties
    labels = (torch.rand(500, generator=gen) < 0.3).float()
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    assert auc(torch.ones(4), y) == 0.5
    assert math.isnan(auc(torch.rand(3), torch.ones(3)))


def test_log_loss_is_mean_binary_cross_entropy() -> None:
    logits, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert log_loss(logits, labels) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_padding_neither_changes_scores_nor_receives_gradient(pooling: str) -> None:
    model = build_ctr_model(10, 4, CTRModelConfig(emb_dim=4, pooling=pooling), seed=0)
    history = torch.tensor([[3, 5, PAD_ID, PAD_ID], [PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    history_category = torch.where(history >= 0, history % 4, torch.full_like(history, PAD_ID))
    candidate, category = torch.tensor([7, 8]), torch.tensor([3, 0])
    logits = model(history, history_category, candidate, category)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    item_grad = model.get_parameter("emb.item.weight").grad
    assert item_grad is not None
    assert torch.count_nonzero(item_grad[0]) == 0  # padding was looked up as row 0, yet row 0 got nothing
    assert torch.count_nonzero(item_grad[3]) > 0 and torch.count_nonzero(item_grad[7]) > 0
    with torch.no_grad():  # a longer all-pad history still pools to zero: same score
        wider = model(torch.full((1, 6), PAD_ID), torch.full((1, 6), PAD_ID), candidate[1:], category[1:])
    assert wider.item() == pytest.approx(logits[1].item(), abs=1e-6)


def test_batch_l2_touches_only_rows_the_batch_uses() -> None:
    data = generate_recsys(SMALL)
    model = build_ctr_model(SMALL.num_items, SMALL.num_categories, seed=0)
    before = model.get_parameter("emb.item.weight").detach().clone()
    train_ctr(model, data.clients[0], LocalTrainingConfig(lr=0.01, l2_emb=1.0), seed=0)
    moved = (model.get_parameter("emb.item.weight").detach() != before).any(dim=1)
    used = index_sets_of(data.clients[0])["emb.item"]
    assert torch.equal(moved.nonzero().reshape(-1), used)


def test_central_training_beats_chance() -> None:
    data = generate_recsys(SMALL)
    model = build_ctr_model(SMALL.num_items, SMALL.num_categories, seed=0)
    samples = CTRSamples(
        *[torch.cat([getattr(c, f) for c in data.clients]) for f in CTRSamples.__dataclass_fields__]
    )
    assert evaluate_ctr(model, data.test)["auc"] == pytest.approx(0.5, abs=0.08)
    train_ctr(model, samples, LocalTrainingConfig(lr=0.003), seed=0)
    assert evaluate_ctr(model, data.test)["auc"] > 0.65


def test_configs_reject_bad_json() -> None:
    assert CTRModelConfig.from_json(CTRModelConfig(emb_dim=8, pooling="mean").to_json()).emb_dim == 8
    with pytest.raises(ValueError, match="pooling"):
        CTRModelConfig.from_json({"pooling": "max"})
    with pytest.raises(ValueError, match="hidden"):
        CTRModelConfig.from_json({"hidden": [64, -1]})
    with pytest.raises(ValueError, match="optimizer"):
        LocalTrainingConfig.from_json({"optimizer": "lbfgs"})
    with pytest.raises(ValueError, match="lr"):
        LocalTrainingConfig.from_json({"lr": 0})


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_local_optimizer_steps_as_torch_optim_does(kind: str) -> None:
    data = generate_recsys(
        RecsysConfig(num_items=500, num_categories=20, num_clients=1, samples_per_user=64, seed=3)
    )
    ours, theirs = (build_ctr_model(500, 20, seed=1) for _ in range(2))
    optimizer = LocalOptimizer(list(ours.parameters()), 0.01, kind)
    reference = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(theirs.parameters(), lr=0.01)
    batch = data.clients[0]
    for _ in range(4):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            if model is ours:
                optimizer.zero_grad()
            else:
                reference.zero_grad(set_to_none=False)
            F.binary_cross_entropy_with_logits(model.logits(batch), batch.label).backward()
            opt.step()
    for (name, mine), other in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, other, rtol=0, atol=1e-7, msg=name)
    # Rows no sample touched never move (what keeps submodel training equal to full-model training).
    touched = index_sets_of(batch)["emb.item"]
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[touched] = False
    untouched[0] = False  # the padding row
    initial = build_ctr_model(500, 20, seed=1).state_dict()["emb.item.weight"]
    assert torch.equal(ours.state_dict()["emb.item.weight"][untouched], initial[untouched])


def test_local_training_does_not_import_torch_dynamo() -> None:
    # torch.optim would (1.4 s of CPU in every agent run); checked in a fresh interpreter.
    script = """
import sys, torch
from training.fl.ctr_model import LocalTrainingConfig, build_ctr_model, train_ctr
from training.fl.recsys_data import RecsysConfig, generate_recsys
data = generate_recsys(RecsysConfig(num_items=300, num_categories=10, num_clients=1, samples_per_user=40))
train_ctr(build_ctr_model(300, 10), data.clients[0], LocalTrainingConfig())
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
