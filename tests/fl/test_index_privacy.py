"""Two-stage randomized response over the union of ids: frequencies, memoisation, ε, cost, decoys."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from training.fl.ctr_model import CTRModelConfig, build_ctr_model
from training.fl.index_privacy import (
    PRESETS,
    IndexPrivacyClient,
    PrivacyPreset,
    expected_download_bytes,
    expected_request_rows,
    inclusion_probabilities,
    per_round_epsilon,
    permanent_epsilon,
    preset,
)
from training.fl.recsys_data import RecsysConfig, generate_recsys
from training.fl.submodel import (
    download_tensors,
    extract_submodel,
    index_sets_of,
    submodel_client_train,
    union_of,
    validate_sparse_update,
)

UNION = torch.arange(0, 80_000, 2, dtype=torch.int64)  # 40,000 ids
REAL = UNION[::4]  # 10,000 of them are the client's real ids


def _within_binomial(hits: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """|hits - n p| within `sigmas` binomial standard deviations (exact when p is 0 or 1)."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("name", ["default", "none", "whole_union"])
def test_both_stages_keep_and_add_with_the_presets_probabilities(name: str) -> None:
    p = preset(name)
    client = IndexPrivacyClient(p, seed=11)
    request = client.request({"emb.item": REAL}, {"emb.item": UNION})["emb.item"]
    memo = client.permanent_response("emb.item")
    assert torch.equal(memo.ids, UNION)
    real = torch.isin(UNION, REAL)
    permanent = memo.permanent_set(UNION)
    # Permanent stage: real ids kept with p1, the others added with p2.
    assert _within_binomial(int((permanent & real).sum()), int(real.sum()), p.p1)
    assert _within_binomial(int((permanent & ~real).sum()), int((~real).sum()), p.p2)
    # Per-round stage, given the permanent set: kept with p3, added with p4.
    in_request = torch.isin(UNION, request)
    assert _within_binomial(int((in_request & permanent).sum()), int(permanent.sum()), p.p3)
    assert _within_binomial(int((in_request & ~permanent).sum()), int((~permanent).sum()), p.p4)


def test_marginal_request_frequencies_match_q_real_and_q_decoy() -> None:
    """Over many clients (fresh permanent draws), P(id requested | real) = q_real, | not real) = q_decoy."""
    p = preset("default")
    q_real, q_decoy = inclusion_probabilities(p)
    assert (q_real, q_decoy) == pytest.approx((226 / 256, 30 / 256))
    real_hits = decoy_hits = 0
    for seed in range(5):
        request = IndexPrivacyClient(p, seed=seed).request({"t": REAL}, {"t": UNION})["t"]
        real_hits += int(torch.isin(REAL, request).sum())
        decoy_hits += int(request.numel() - torch.isin(REAL, request).sum())
    assert _within_binomial(real_hits, 5 * REAL.numel(), q_real)
    assert _within_binomial(decoy_hits, 5 * (UNION.numel() - REAL.numel()), q_decoy)


def test_no_privacy_requests_exactly_the_real_ids_and_whole_union_requests_everything() -> None:
    real = {"emb.item": REAL, "emb.cat": torch.tensor([1, 4])}
    union = {"emb.item": UNION, "emb.cat": torch.arange(10)}
    exact = IndexPrivacyClient(preset("none"), seed=0).request(real, union)
    assert torch.equal(exact["emb.item"], REAL) and exact["emb.cat"].tolist() == [1, 4]
    everything = IndexPrivacyClient(preset("whole_union"), seed=0).request(real, union)
    assert torch.equal(everything["emb.item"], UNION) and torch.equal(everything["emb.cat"], torch.arange(10))


def test_permanent_stage_is_memoised_across_rounds_and_restarts(tmp_path: Path) -> None:
    p = preset("default")
    first = IndexPrivacyClient(p, state_dir=tmp_path, seed=1)
    r1 = first.request({"t": REAL}, {"t": UNION})["t"]
    r2 = first.request({"t": REAL}, {"t": UNION})["t"]
    assert not torch.equal(r1, r2)  # the per-round stage is fresh every round
    memo = first.permanent_response("t")
    assert (tmp_path / "index_privacy.t.safetensors").exists()
    # A restarted agent (new object, other randomness) reuses the stored permanent draws.
    restarted = IndexPrivacyClient(p, state_dir=tmp_path, seed=999)
    restarted.request({"t": REAL}, {"t": UNION})
    assert restarted.permanent_response("t").same_as(memo)
    # The union grows: old ids keep their draws, the new ids get fresh ones.
    grown = torch.cat([UNION, torch.arange(80_001, 81_001, 2)])
    restarted.request({"t": REAL}, {"t": grown})
    after = restarted.permanent_response("t")
    old = torch.isin(after.ids, UNION)
    assert torch.equal(after.response[old], memo.response) and int((~old).sum()) == 500
    # Another preset's draws do not apply.
    other = IndexPrivacyClient(PrivacyPreset("custom", 0.5, 0.5, 1.0, 0.0), state_dir=tmp_path, seed=2)
    other.request({"t": REAL}, {"t": UNION})
    assert not other.permanent_response("t").same_as(memo)


def test_an_id_that_becomes_real_is_redrawn_for_its_new_truth() -> None:
    p = PrivacyPreset("strict", 1.0, 0.0, 1.0, 0.0)
    client = IndexPrivacyClient(p, seed=0)
    union = torch.arange(10)
    assert client.request({"t": torch.tensor([2])}, {"t": union})["t"].tolist() == [2]
    assert client.request({"t": torch.tensor([2, 7])}, {"t": union})["t"].tolist() == [2, 7]


def test_epsilon_per_preset() -> None:
    assert per_round_epsilon(PRESETS["default"]) == pytest.approx(math.log(113 / 15))
    assert per_round_epsilon(PRESETS["default"]) == pytest.approx(2.0194, abs=1e-4)
    assert permanent_epsilon(PRESETS["default"]) == pytest.approx(math.log(15))
    assert per_round_epsilon(PRESETS["none"]) == math.inf
    assert per_round_epsilon(PRESETS["whole_union"]) == 0.0 == permanent_epsilon(PRESETS["whole_union"])
    # More decoys, more deniability.
    noisier = PrivacyPreset("noisier", 0.75, 0.25, 0.75, 0.25)
    assert per_round_epsilon(noisier) < per_round_epsilon(PRESETS["default"])


def test_expected_request_size_matches_the_draws() -> None:
    p = preset("default")
    expected = expected_request_rows(REAL.numel(), UNION.numel(), p)
    assert expected == pytest.approx(10_000 * 226 / 256 + 30_000 * 30 / 256)
    sizes = [IndexPrivacyClient(p, seed=s).request({"t": REAL}, {"t": UNION})["t"].numel() for s in range(4)]
    assert abs(sum(sizes) / 4 - expected) < 4 * math.sqrt(expected)
    assert expected_request_rows(300, 5_000, preset("none")) == 300
    assert expected_request_rows(300, 5_000, preset("whole_union")) == 5_000
    assert expected_download_bytes(300, 5_000, preset("none"), emb_dim=16, dense_bytes=100) == 300 * 72 + 100
    with pytest.raises(ValueError):
        expected_request_rows(10, 5, p)


def test_a_union_of_100k_ids_is_handled_in_a_fraction_of_a_second() -> None:
    union = torch.arange(100_000, dtype=torch.int64)
    real = torch.randperm(100_000, generator=torch.Generator().manual_seed(0))[:300].sort().values
    client = IndexPrivacyClient(preset("default"), seed=0)
    start = time.perf_counter()
    for _ in range(3):
        client.request({"t": real}, {"t": union})
    assert (time.perf_counter() - start) / 3 < 0.5


def test_preset_validation_and_json() -> None:
    with pytest.raises(ValueError, match="p3"):
        PrivacyPreset("bad", 1.0, 0.0, 1.5, 0.0)
    with pytest.raises(ValueError, match="unknown privacy preset"):
        preset("paranoid")
    assert PrivacyPreset.from_json({"name": "none"}) == PRESETS["none"]
    custom = PrivacyPreset.from_json({"p1": 0.9, "p2": 0.1, "p3": 0.8, "p4": 0.2})
    assert (custom.name, custom.p3) == ("custom", 0.8)


def test_a_private_client_trains_only_real_rows_and_zeroes_decoys() -> None:
    cfg = RecsysConfig(num_items=4_000, num_categories=30, num_clients=5, samples_per_user=100, seed=2)
    data = generate_recsys(cfg)
    model_cfg = CTRModelConfig(emb_dim=8, hidden=(16,), attention_hidden=8)
    full = dict(build_ctr_model(cfg.num_items, cfg.num_categories, model_cfg, seed=0).state_dict())
    reals = [index_sets_of(c) for c in data.clients]
    union = union_of(reals)
    request = IndexPrivacyClient(preset("default"), seed=5).request(reals[0], union)
    sub, idx = extract_submodel(full, request)
    config = {"model": model_cfg.to_json(), "epochs": 1, "batch_size": 16, "lr": 0.01}
    upload, metrics = submodel_client_train(download_tensors(sub, idx), config, data.clients[0], seed=0)
    for table in ("emb.item", "emb.cat"):
        ids = upload[f"{table}.idx"]
        assert torch.equal(ids, request[table])  # the upload lists exactly the request
        decoy = ~torch.isin(ids, reals[0][table])
        assert torch.count_nonzero(upload[f"{table}.rows"][decoy]) == 0
        assert torch.count_nonzero(upload[f"{table}.count"][decoy]) == 0
    assert int((~torch.isin(request["emb.item"], reals[0]["emb.item"])).sum()) > 0  # there were decoys
    assert metrics["rows_trained"] < metrics["rows_requested"]
    shapes = {k: tuple(v.shape) for k, v in full.items()}
    assert validate_sparse_update(upload, shapes, ["emb.item", "emb.cat"], request) == []
