"""Submodel mechanics: extraction/merge, local id remapping, sparse uploads and their validation."""

from __future__ import annotations

import re

import pytest
import torch

from training.fl.ctr_model import (
    PAD_ID,
    CTRModel,
    CTRModelConfig,
    CTRSamples,
    LocalTrainingConfig,
    build_ctr_model,
    train_ctr,
)
from training.fl.recsys_data import RecsysConfig, generate_recsys
from training.fl.submodel import (
    apply_sparse_update,
    densify_update,
    download_tensors,
    extract_submodel,
    index_sets_of,
    localize_samples,
    merge_submodel,
    row_counts,
    sparse_update,
    split_download,
    submodel_client_train,
    validate_sparse_update,
)

TABLES = ["emb.item", "emb.cat"]
CFG = RecsysConfig(num_items=3_000, num_categories=40, num_clients=4, samples_per_user=120, seed=7)
MODEL = CTRModelConfig(emb_dim=8, hidden=(16,), attention_hidden=8)
TRAIN = {"model": MODEL.to_json(), "epochs": 1, "batch_size": 16, "lr": 0.01}


@pytest.fixture(scope="module")
def data():
    return generate_recsys(CFG)


@pytest.fixture()
def full():
    return dict(build_ctr_model(CFG.num_items, CFG.num_categories, MODEL, seed=0).state_dict())


def _shapes(weights):
    return {k: tuple(v.shape) for k, v in weights.items()}


def _client_upload(full, samples, extra_items=()):
    request = index_sets_of(samples)
    request["emb.item"] = torch.unique(
        torch.cat([request["emb.item"], torch.tensor(extra_items, dtype=torch.int64)])
    )
    sub, idx = extract_submodel(full, request)
    upload, metrics = submodel_client_train(download_tensors(sub, idx), TRAIN, samples, seed=0)
    return request, upload, metrics


def test_extract_then_merge_is_the_identity(full) -> None:
    ids = {"emb.item": torch.tensor([0, 17, 2999]), "emb.cat": torch.tensor([5])}
    sub, idx = extract_submodel(full, ids)
    assert sub["emb.item.weight"].shape == (3, 8)
    assert torch.equal(sub["emb.item.weight"][1], full["emb.item.weight"][17])
    assert torch.equal(sub["mlp.0.weight"], full["mlp.0.weight"])
    original = sub["emb.item.weight"].clone()
    sub["emb.item.weight"] += 1.0  # a copy, not a view into the server's model
    assert not torch.equal(sub["emb.item.weight"][0], full["emb.item.weight"][0])
    sub["emb.item.weight"] = original
    merged = merge_submodel(full, sub, idx)
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[k], full[k]) for k in full)


def test_extract_rejects_bad_index_sets(full) -> None:
    with pytest.raises(ValueError, match="outside"):
        extract_submodel(full, {"emb.item": torch.tensor([3_000]), "emb.cat": torch.tensor([0])})
    with pytest.raises(ValueError, match="sorted"):
        extract_submodel(full, {"emb.item": torch.tensor([5, 5]), "emb.cat": torch.tensor([0])})


def test_download_splits_back_into_submodel_and_ids(full) -> None:
    sub, idx = extract_submodel(full, {"emb.item": torch.tensor([1, 4]), "emb.cat": torch.tensor([0, 2])})
    sub2, idx2 = split_download(download_tensors(sub, idx), TABLES)
    assert sub2.keys() == sub.keys() and all(torch.equal(idx2[t], idx[t]) for t in TABLES)
    broken = download_tensors(sub, idx)
    broken["emb.item.idx"] = torch.tensor([1])
    with pytest.raises(ValueError, match="do not match"):
        split_download(broken, TABLES)


def test_submodel_scores_equal_full_model_scores(full, data) -> None:
    samples = data.clients[0]
    sub, idx = extract_submodel(full, index_sets_of(samples))
    local, dropped = localize_samples(samples, idx)
    assert dropped == 0 and int(local.candidate.max()) < idx["emb.item"].numel()
    small = CTRModel(idx["emb.item"].numel(), idx["emb.cat"].numel(), MODEL)
    small.load_state_dict(sub)
    big = CTRModel(CFG.num_items, CFG.num_categories, MODEL)
    big.load_state_dict(full)
    assert torch.allclose(small.logits(local), big.logits(samples), atol=1e-6)


def test_rows_not_downloaded_drop_samples_or_become_padding() -> None:
    samples = CTRSamples(
        history=torch.tensor([[1, 2, PAD_ID], [1, 3, 2]]),
        history_category=torch.tensor([[0, 0, PAD_ID], [0, 1, 0]]),
        candidate=torch.tensor([2, 9]),
        category=torch.tensor([1, 1]),
        label=torch.tensor([1.0, 0.0]),
    )
    # Item 3 and candidate 9 were not downloaded: sample 1 is dropped, sample 0 keeps items 1 and 2.
    local, dropped = localize_samples(
        samples, {"emb.item": torch.tensor([1, 2]), "emb.cat": torch.tensor([0, 1])}
    )
    assert dropped == 1
    assert local.history.tolist() == [[0, 1, PAD_ID]] and local.candidate.tolist() == [1]
    assert local.history_category.tolist() == [[0, 0, PAD_ID]] and local.category.tolist() == [1]


def test_row_counts_count_samples_not_occurrences() -> None:
    samples = CTRSamples(
        history=torch.tensor([[0, 0, 2], [1, PAD_ID, PAD_ID]]),
        history_category=torch.tensor([[0, 0, 1], [0, PAD_ID, PAD_ID]]),
        candidate=torch.tensor([0, 3]),
        category=torch.tensor([0, 1]),
        label=torch.tensor([1.0, 0.0]),
    )
    counts = row_counts(samples, {"emb.item": 5, "emb.cat": 2})
    assert counts["emb.item"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert counts["emb.cat"].tolist() == [2.0, 2.0]


def test_sparse_update_applied_to_the_full_model_equals_merging_the_trained_submodel(full, data) -> None:
    samples = data.clients[1]
    sub, idx = extract_submodel(full, index_sets_of(samples))
    local, _ = localize_samples(samples, idx)
    model = CTRModel(idx["emb.item"].numel(), idx["emb.cat"].numel(), MODEL)
    model.load_state_dict(sub)
    train_ctr(model, local, LocalTrainingConfig(lr=0.01), seed=0)
    after = model.state_dict()
    counts = row_counts(local, {t: idx[t].numel() for t in TABLES})
    upload = sparse_update(sub, after, idx, counts)
    assert torch.equal(upload["emb.item.idx"], idx["emb.item"])
    applied = apply_sparse_update(full, upload, TABLES)
    merged = merge_submodel(full, after, idx)
    assert all(torch.allclose(applied[k], merged[k], atol=1e-6) for k in full)
    delta, full_counts = densify_update(upload, _shapes(full), TABLES)
    assert torch.allclose(
        full["emb.item.weight"] + delta["emb.item.weight"], merged["emb.item.weight"], atol=1e-6
    )
    assert float(full_counts["emb.item"].sum()) == float(counts["emb.item"].sum())


def test_training_the_submodel_equals_training_the_full_model(full, data) -> None:
    """Apples to apples: the FedAvg baseline trains the full model; the rows it moves and their values
    are the ones the submodel moves."""
    samples = data.clients[2]
    _, upload, _ = _client_upload(full, samples)
    big = CTRModel(CFG.num_items, CFG.num_categories, MODEL)
    big.load_state_dict(full)
    train_ctr(big, samples, LocalTrainingConfig.from_json(TRAIN), seed=0)
    trained = big.state_dict()
    via_submodel = apply_sparse_update(full, upload, TABLES)
    for name in full:
        assert torch.allclose(trained[name], via_submodel[name], atol=2e-5), name


def test_decoy_rows_carry_zero_update_and_zero_count(full, data) -> None:
    samples = data.clients[0]
    real = index_sets_of(samples)["emb.item"]
    decoys = [i for i in range(CFG.num_items) if i not in set(real.tolist())][:25]
    request, upload, metrics = _client_upload(full, samples, extra_items=decoys)
    assert torch.equal(upload["emb.item.idx"], request["emb.item"])  # nothing outside the request
    is_decoy = torch.isin(upload["emb.item.idx"], torch.tensor(decoys))
    assert int(is_decoy.sum()) == 25
    assert torch.count_nonzero(upload["emb.item.rows"][is_decoy]) == 0
    assert torch.count_nonzero(upload["emb.item.count"][is_decoy]) == 0
    assert bool((upload["emb.item.count"][~is_decoy] > 0).all())
    assert metrics["rows_requested"] == request["emb.item"].numel() + request["emb.cat"].numel()
    assert validate_sparse_update(upload, _shapes(full), TABLES, request, max_count=len(samples)) == []


def _valid_upload(full, data):
    request, upload, _ = _client_upload(full, data.clients[3])
    return request, upload


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (
            lambda u: u.__setitem__(
                "emb.item.idx", u["emb.item.idx"].clone().index_fill_(0, torch.tensor([0]), 3_000)
            ),
            "out of range",
        ),
        (
            lambda u: u.__setitem__(
                "emb.item.idx", u["emb.item.idx"].clone().index_fill_(0, torch.tensor([0]), -1)
            ),
            "out of range",
        ),
        (
            lambda u: u.__setitem__(
                "emb.item.idx", torch.cat([u["emb.item.idx"][:1], u["emb.item.idx"][:-1]])
            ),
            "duplicate",
        ),
        (lambda u: u.__setitem__("emb.item.rows", u["emb.item.rows"][:-1]), "mismatched lengths"),
        (lambda u: u.__setitem__("emb.cat.count", u["emb.cat.count"][1:]), "mismatched lengths"),
        (lambda u: u["emb.item.rows"].view(-1).__setitem__(0, float("nan")), "non-finite"),
        (lambda u: u["mlp.0.weight"].view(-1).__setitem__(3, float("inf")), "non-finite"),
        (lambda u: u.__setitem__("emb.item.idx", u["emb.item.idx"].to(torch.int32)), "int64"),
        (lambda u: u.__setitem__("emb.item.rows", u["emb.item.rows"][:, :4].contiguous()), r"\[k, 8\]"),
        (lambda u: u.pop("emb.cat.count"), "missing emb.cat.count"),
        (lambda u: u.pop("mlp.0.bias"), "missing dense delta mlp.0.bias"),
        (lambda u: u.__setitem__("emb.item.weight", torch.zeros(3_000, 8)), "unexpected tensors"),
        (lambda u: u.__setitem__("mlp.0.weight", torch.zeros(3, 3)), "mlp.0.weight must be float32"),
        (lambda u: u["emb.item.count"].__setitem__(0, -1.0), "finite and >= 0"),
        (lambda u: u["emb.item.count"].__setitem__(0, 10_000.0), "exceeds"),
    ],
)
def test_malformed_sparse_updates_are_rejected_with_a_reason(full, data, corrupt, reason) -> None:
    request, upload = _valid_upload(full, data)
    corrupt(upload)
    problems = validate_sparse_update(upload, _shapes(full), TABLES, request, max_count=len(data.clients[3]))
    assert problems, "malformed update accepted"
    assert any(re.search(reason, p) for p in problems), problems


def test_ids_outside_the_request_are_rejected(full, data) -> None:
    request, upload = _valid_upload(full, data)
    outside = [i for i in range(CFG.num_items) if i not in set(request["emb.item"].tolist())][0]
    upload["emb.item.idx"] = upload["emb.item.idx"].clone()
    upload["emb.item.idx"][0] = outside
    upload["emb.item.idx"], order = torch.sort(upload["emb.item.idx"])
    upload["emb.item.rows"], upload["emb.item.count"] = (
        upload["emb.item.rows"][order],
        upload["emb.item.count"][order],
    )
    problems = validate_sparse_update(upload, _shapes(full), TABLES, request)
    assert any("not requested" in p for p in problems), problems


def test_a_zero_count_row_with_a_nonzero_update_is_rejected(full, data) -> None:
    request, upload = _valid_upload(full, data)
    upload["emb.item.count"][0] = 0.0
    problems = validate_sparse_update(upload, _shapes(full), TABLES, request)
    assert any("zero count" in p for p in problems), problems
