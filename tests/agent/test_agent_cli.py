"""The agent's commands run in-process (fast) for every error path."""

import io
import json
import math

import pytest
import torch

from training.agent import cli, runner
from training.fl import wire


def run(phone, *argv, environ=None):
    out = io.StringIO()
    rc = cli.main(list(argv), stdout=out, environ=environ or {})
    return rc, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(autouse=True)
def phone_work_dir(monkeypatch, phone):
    # In-process the code is not running from agent.pyz; relative paths resolve against the work dir.
    monkeypatch.setattr(cli, "default_work_dir", lambda: phone.work_dir)


def test_in_process_train_succeeds(phone):
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 0 and lines[-1]["event"] == "done"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": "fast"}, "config.json: config lr must be a number"),
        ({"algorithm": "sgd"}, "unknown algorithm 'sgd'"),
        ({"model": {"name": "mlp"}}, "model spec is missing"),
        (
            {"model": {"name": "mlp", "input_shape": [60], "num_classes": 10}},
            "global weights do not fit the model",
        ),
        ({"shard": "jobs/7/missing.safetensors"}, "data shard"),
        ({"shard": ""}, "shard must be a non-empty string"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"progress_every": 0}, "progress_every must be a positive integer"),
        ({"max_update_bytes": 100}, "over the 100-byte limit"),
    ],
)
def test_bad_configs_fail_with_a_reason(phone, change, message):
    phone.write_config(**change)
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and len(lines) == 1 and lines[0]["event"] == "error"
    assert message in lines[0]["message"]
    assert "\n" not in lines[0]["message"]


def test_missing_required_key(phone):
    del phone.config["lr"]
    phone.write_config()
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and lines[0]["message"] == "config.json: missing required key 'lr'"


def test_config_must_be_an_object(phone):
    (phone.round_dir / "config.json").write_text("[1, 2]")
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and "must hold a JSON object" in lines[0]["message"]


def test_missing_round_dir_and_files(phone, tmp_path):
    rc, lines = run(phone, "train", str(tmp_path / "nope"))
    assert rc == 1 and "does not exist" in lines[0]["message"]
    (phone.round_dir / "global.safetensors").unlink()
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and "global weights: missing tensor file" in lines[0]["message"]


def test_nan_in_global_weights_is_refused(phone):
    weights = {k: v.clone() for k, v in phone.weights.items()}
    next(iter(weights.values()))[0] = float("nan")
    wire.save_tensors(phone.round_dir / "global.safetensors", weights)
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and "NaN" in lines[0]["message"]


def test_truncated_global_weights_are_refused(phone):
    path = phone.round_dir / "global.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and "truncated" in lines[0]["message"]


def test_diverging_training_is_an_error_not_an_update(phone):
    phone.write_config(lr=1e38, epochs=3)
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and ("loss became" in lines[-1]["message"] or "non-finite" in lines[-1]["message"])
    assert not (phone.round_dir / "update.safetensors").exists()


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"x": torch.rand(5, 64), "y": torch.zeros(5, dtype=torch.int64)}, "the model expects [1, 8, 8]"),
        ({"x": torch.rand(5, 1, 8, 8), "y": torch.zeros(4, dtype=torch.int64)}, "need n ≥ 1 rows"),
        ({"x": torch.rand(5, 1, 8, 8), "y": torch.zeros(5, dtype=torch.int32)}, "y int64"),
        (
            {"x": torch.rand(5, 1, 8, 8), "y": torch.full((5,), 10, dtype=torch.int64)},
            "labels must be in [0, 10)",
        ),
        (
            {"x": torch.full((5, 1, 8, 8), math.inf), "y": torch.zeros(5, dtype=torch.int64)},
            "NaN or infinite",
        ),
        ({"x": torch.rand(5, 1, 8, 8)}, "lacks y"),
    ],
)
def test_bad_shards_are_refused(phone, shard, message):
    wire.save_tensors(phone.work_dir / "jobs" / "7" / "shard.safetensors", shard)
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 1 and message in lines[0]["message"]


@pytest.mark.parametrize("value", ["0.5", "fast", "nan", "inf"])
def test_bad_slowdown_is_an_error(phone, value):
    rc, lines = run(phone, "train", str(phone.round_dir), environ={"FEDFLEET_SLOWDOWN": value})
    assert rc == 1 and "FEDFLEET_SLOWDOWN" in lines[0]["message"]


def test_slowdown_sleeps_in_proportion_to_step_time():
    slept = []
    printer = runner._ProgressPrinter(io.StringIO(), every=1, slowdown=2.5, sleep=slept.append)
    from training.fl.client import Progress

    printer(Progress(epoch=1, step=1, steps=2, loss=1.0, step_time_s=0.2, elapsed_s=0.2))
    printer(Progress(epoch=1, step=2, steps=2, loss=1.0, step_time_s=0.1, elapsed_s=0.3))
    assert slept == pytest.approx([0.3, 0.15])
    assert printer.compute_s == pytest.approx(0.3)


def test_progress_every_k_steps_plus_the_last(phone):
    phone.write_config(progress_every=3)
    rc, lines = run(phone, "train", str(phone.round_dir))
    assert rc == 0
    assert [e["step"] for e in lines if e["event"] == "progress"] == [3, 6, 9, 10]


def test_straggler_budget_is_reported_as_partial_work(phone):
    phone.write_config(max_steps=4)
    rc, lines = run(phone, "train", str(phone.round_dir))
    result = phone.read_result()
    assert rc == 0 and result["steps"] == 4 and result["completed"] is False
    assert result["stop_reason"] == "max_steps" and result["epochs_done"] == 0.8


def test_behaviour_env_reaches_the_hook(phone, monkeypatch):
    import sys
    import types

    seen = []
    module = types.ModuleType("training.fl.misbehaviour")

    def apply_behaviour(name, x, y, delta, *, phase, **_):
        seen.append((name, phase))
        return x, y, delta

    module.apply_behaviour = apply_behaviour
    monkeypatch.setitem(sys.modules, "training.fl.misbehaviour", module)
    rc, _ = run(phone, "train", str(phone.round_dir), environ={"FEDFLEET_BEHAVIOUR": "label_flip"})
    assert rc == 0 and seen == [("label_flip", "data"), ("label_flip", "update")]
    assert "label_flip" not in (phone.round_dir / "result.json").read_text()  # the platform is not told


def test_absolute_paths_and_work_dir_override(phone):
    phone.write_config(shard=str(phone.work_dir / "jobs" / "7" / "shard.safetensors"), state_dir=None)
    assert run(phone, "train", str(phone.round_dir))[0] == 0
    phone.write_config(work_dir=str(phone.work_dir / "jobs"), shard="7/shard.safetensors")
    assert run(phone, "train", str(phone.round_dir))[0] == 0


def test_usage_errors_exit_2(phone):
    assert run(phone)[0] == 2
    assert run(phone, "train")[0] == 2
    rc, lines = run(phone, "fly")
    assert rc == 2 and "usage" in lines[0]["message"]


def test_json_lines_never_contain_nan():
    out = io.StringIO()
    runner.emit(out, "progress", loss=float("nan"), nested={"x": [float("inf")]})
    assert json.loads(out.getvalue()) == {"event": "progress", "loss": None, "nested": {"x": [None]}}


@pytest.fixture
def ctr_phone(phone):
    """The phone fixture's work dir with a recsys shard and a FedSubAvg request config; U is written to
    the job's union file, not to the round dir (the platform sends it once per job)."""
    from training.fl.ctr_model import CTRSamples
    from training.fl.datasets import load_dataset
    from training.fl.nets import model_spec_for
    from training.fl.partition import natural
    from training.fl.submodel import index_sets_of, union_of

    splits = load_dataset("recsys", seed=3, num_items=2000, num_clients=2, samples_per_user=40)
    shards = [splits.train.subset(ix) for ix in natural(splits.train.groups)]
    wire.save_tensors(phone.work_dir / "jobs/7/shard.safetensors", {"x": shards[0].x, "y": shards[0].y})
    real = [index_sets_of(CTRSamples.from_xy(s.x, s.y)) for s in shards]
    union = {table + ".union": ids for table, ids in union_of(real).items()}
    wire.save_tensors(phone.work_dir / "jobs/7/union.safetensors", union)
    (phone.round_dir / "global.safetensors").unlink()
    model = model_spec_for(
        "ctr", input_shape=splits.feature_shape, num_classes=splits.num_classes, **splits.model_kwargs
    )
    phone.write_config(
        algorithm="fedsubavg", model=model, union="jobs/7/union.safetensors", index_privacy={"name": "none"}
    )
    return phone, real[0], union


def test_request_reads_the_union_from_the_job_file_the_config_names(ctr_phone):
    phone, real, _ = ctr_phone
    rc, lines = run(phone, "request", str(phone.round_dir))
    assert rc == 0, lines
    request = wire.load_tensors(phone.round_dir / "request.safetensors", max_bytes=1 << 20)
    # Preset "none": exactly the phone's own ids, for every table.
    assert {k: v.tolist() for k, v in request.items()} == {
        t + ".idx": ids.tolist() for t, ids in real.items()
    }


def test_request_without_a_union_file_names_what_is_missing(ctr_phone):
    phone, _, _ = ctr_phone
    (phone.work_dir / "jobs/7/union.safetensors").unlink()
    rc, lines = run(phone, "request", str(phone.round_dir))
    assert rc == 1 and "union of ids (union.safetensors)" in lines[-1]["message"]
    assert not (phone.round_dir / "request.safetensors").exists()


def test_request_without_decoys_needs_no_union_at_all(ctr_phone):
    phone, real, _ = ctr_phone
    del phone.config["union"]
    phone.write_config()  # preset "none", no union file named, no global.safetensors in the round dir
    rc, lines = run(phone, "request", str(phone.round_dir))
    assert rc == 0, lines
    request = wire.load_tensors(phone.round_dir / "request.safetensors", max_bytes=1 << 20)
    assert {k: v.tolist() for k, v in request.items()} == {
        t + ".idx": ids.tolist() for t, ids in real.items()
    }
    phone.write_config(index_privacy={"name": "default"})  # decoys need U: a clear error, not a guess
    rc, lines = run(phone, "request", str(phone.round_dir))
    assert rc == 1 and "emb.item.union" in lines[-1]["message"]
