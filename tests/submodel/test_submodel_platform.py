"""Submodel jobs on the platform, without workers: job validation, the request step's checks, the
recorded requests an upload is checked against, the CTR data set / model / evaluation the engine uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.engine import submodel_rounds
from training.fl.datasets import load_dataset
from training.fl.evaluate import evaluate_weights
from training.fl.fedsubavg import FedSubAvg, fedsubavg_client_request
from training.fl.nets import initial_weights, model_spec_for, submodel_spec
from training.fl.strategy import ServerState
from training.fl.wire import load_tensors
from training.jobs.config import JobConfigError, parse_job_config

SUBMODEL_JOB = {
    "dataset": "recsys",
    "dataset_params": {"num_items": 3000, "num_clients": 3},
    "partition": "natural",
    "model": "ctr",
    "algorithm": "fedsubavg",
}


def errors_of(**config: Any) -> dict[str, str]:
    with pytest.raises(JobConfigError) as caught:
        parse_job_config(config)
    return caught.value.errors


# ----------------------------------------------------------------------------------- job validation


def test_a_submodel_job_is_valid_with_its_privacy_preset_and_row_weighting() -> None:
    config = parse_job_config(
        {**SUBMODEL_JOB, "algorithm_params": {"privacy": "whole_union", "row_weight": "count"}}
    )
    assert config.algorithm_params == {"privacy": "whole_union", "row_weight": "count"}
    assert parse_job_config({**SUBMODEL_JOB, "algorithm": "fedavg_full"}).algorithm == "fedavg_full"


def test_submodel_algorithms_need_the_recsys_data_and_the_ctr_model() -> None:
    errors = errors_of(algorithm="fedsubavg")  # digits + mlp by default
    assert "recsys" in errors["dataset"] and "ctr" in errors["model"]
    errors = errors_of(**{**SUBMODEL_JOB, "model": "mlp"})
    assert set(errors) == {"model"}


def test_recsys_and_ctr_refuse_other_algorithms_partitions_and_data() -> None:
    errors = errors_of(**{**SUBMODEL_JOB, "algorithm": "fedavg"})
    assert set(errors) == {"algorithm"} and "fedsubavg" in errors["algorithm"]
    assert "natural" in errors_of(**{**SUBMODEL_JOB, "partition": "iid"})["partition"]
    assert "recsys" in errors_of(model="ctr")["model"]
    assert "backdoor_test" in errors_of(**SUBMODEL_JOB, backdoor_test=True)


def test_bad_privacy_preset_or_row_weighting_is_an_algorithm_parameter_error() -> None:
    errors = errors_of(**SUBMODEL_JOB, algorithm_params={"privacy": "secret"})
    assert "privacy preset" in errors["algorithm_params"]
    errors = errors_of(**SUBMODEL_JOB, algorithm_params={"row_weight": "heavy"})
    assert "row_weight" in errors["algorithm_params"]


# ---------------------------------------------------------------------------- data, model, metrics


@pytest.fixture(scope="module")
def job_world() -> tuple[FedSubAvg, ServerState, list[Any], dict[str, Any]]:
    splits = load_dataset("recsys", seed=0, num_items=3000, num_clients=3, samples_per_user=100)
    spec = model_spec_for("ctr", input_shape=splits.feature_shape, num_classes=2, **splits.model_kwargs)
    strategy = FedSubAvg()
    state = strategy.initial_state(initial_weights(spec, seed=1))
    assert splits.train.groups is not None
    shards = [splits.train.subset(np.flatnonzero(splits.train.groups == g)) for g in range(3)]
    submodel_rounds.set_union_from_shards(strategy, state, shards)
    return strategy, state, shards, {"spec": spec, "splits": splits}


def test_ctr_evaluation_records_auc_and_logloss(job_world: Any) -> None:
    strategy, state, _, extra = job_world
    splits = extra["splits"]
    evaluation = evaluate_weights(extra["spec"], state.weights, splits.test.x, splits.test.y)
    assert 0.0 <= evaluation.extra["auc"] <= 1.0
    assert evaluation.loss == evaluation.extra["logloss"] and 0.0 <= evaluation.accuracy <= 1.0


def test_a_phone_builds_a_model_of_its_submodel_size_not_the_full_one(job_world: Any) -> None:
    _, _, _, extra = job_world
    received = {"emb.item.idx": torch.arange(7), "emb.cat.idx": torch.arange(3)}
    spec = submodel_spec(extra["spec"], received)
    assert (spec["num_items"], spec["num_categories"]) == (7, 3)
    assert extra["spec"]["num_items"] == 3000


# --------------------------------------------------------------------------------- the request step


def honest_request(strategy: FedSubAvg, state: ServerState, shard: Any, tmp: Path) -> dict[str, torch.Tensor]:
    union_file = tmp / "union.safetensors"
    (plan,) = submodel_rounds.request_plan(
        strategy, state, ["7"], {"lr": 0.01}, union_file=union_file, union_on_phone="jobs/1/union.safetensors"
    )
    assert plan.tensors == {} and plan.config["union"] == "jobs/1/union.safetensors"
    union = load_tensors(union_file, max_bytes=union_file.stat().st_size)
    return fedsubavg_client_request(plan.config, union, shard.x, shard.y, tmp, seed=3)


def test_the_request_payload_names_the_union_only_when_the_preset_draws_decoys(
    job_world: Any, tmp_path: Path
) -> None:
    _, _, _, extra = job_world
    strategy = FedSubAvg(privacy="none")
    state = strategy.initial_state(initial_weights(extra["spec"], seed=1))
    submodel_rounds.set_union_from_shards(strategy, state, job_world[2])
    union_file = tmp_path / "union.safetensors"
    (plan,) = submodel_rounds.request_plan(
        strategy, state, ["7"], {"lr": 0.01}, union_file=union_file, union_on_phone="jobs/1/union.safetensors"
    )
    assert "union" not in plan.config and not union_file.exists()


def test_an_honest_request_is_accepted(job_world: Any, tmp_path: Path) -> None:
    strategy, state, shards, _ = job_world
    assert (
        submodel_rounds.request_errors(strategy, state, honest_request(strategy, state, shards[0], tmp_path))
        == []
    )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("outside_union", "outside the union"),
        ("duplicate", "duplicate"),
        ("unsorted", "not sorted"),
        ("oversized", "more than the union"),
        ("float", "int64"),
        ("missing", "missing emb.cat.idx"),
    ],
)
def test_a_malformed_request_is_rejected_with_its_reason(
    job_world: Any, tmp_path: Path, tamper: str, reason: str
) -> None:
    strategy, state, shards, _ = job_world
    request = honest_request(strategy, state, shards[0], tmp_path)
    ids = request["emb.item.idx"]
    union = strategy.union(state)["emb.item"]
    if tamper == "outside_union":
        outside = int(np.setdiff1d(np.arange(3000), union.numpy())[0])
        request["emb.item.idx"] = torch.sort(torch.cat([ids, torch.tensor([outside])])).values
    elif tamper == "duplicate":
        request["emb.item.idx"] = torch.sort(torch.cat([ids, ids[:2]])).values
    elif tamper == "unsorted":
        request["emb.item.idx"] = ids.flip(0)
    elif tamper == "oversized":
        request["emb.item.idx"] = torch.arange(union.numel() + 1)
    elif tamper == "float":
        request["emb.item.idx"] = ids.to(torch.float32)
    else:
        del request["emb.cat.idx"]
    errors = submodel_rounds.request_errors(strategy, state, request)
    assert errors and reason in "; ".join(errors)


def test_uploads_are_checked_against_the_request_recorded_in_the_round_dir(
    job_world: Any, tmp_path: Path
) -> None:
    strategy, state, shards, _ = job_world
    request = honest_request(strategy, state, shards[0], tmp_path / "phone")
    submodel_rounds.record_request(tmp_path, request)
    restored = ServerState(
        weights=state.weights, buffers=dict(state.buffers), meta={"fedsubavg.requests": {}}
    )
    # What a fresh worker does: nothing in memory, the request comes back from the round dir.
    submodel_rounds.restore_requests(strategy, restored, 1, {"7": tmp_path, "8": tmp_path / "none"})
    (instructions,) = strategy.configure(restored, 1, ["7"], {"lr": 0.01})
    assert torch.equal(instructions.tensors["emb.item.idx"], request["emb.item.idx"])
    # An upload that touches a row this phone did not request is rejected.
    dim = state.weights["emb.item.weight"].shape[1]
    upload: dict[str, torch.Tensor] = {
        name: torch.zeros_like(w) for name, w in state.weights.items() if not name.startswith("emb.")
    }
    for table in ("emb.item", "emb.cat"):
        requested = request[table + ".idx"]
        upload[table + ".idx"] = requested
        upload[table + ".rows"] = torch.zeros(requested.numel(), dim)
        upload[table + ".count"] = torch.zeros(requested.numel())
    assert strategy.validate_upload(restored, "7", upload, 100) == []
    outside = int(np.setdiff1d(strategy.union(state)["emb.item"].numpy(), request["emb.item.idx"].numpy())[0])
    upload["emb.item.idx"] = torch.sort(
        torch.cat([request["emb.item.idx"][1:], torch.tensor([outside])])
    ).values
    problems = strategy.validate_upload(restored, "7", upload, 100)
    assert any("not requested" in p for p in problems)
    assert strategy.validate_upload(restored, "8", upload, 100)  # no request recorded: rejected
