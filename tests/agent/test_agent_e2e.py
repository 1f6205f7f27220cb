"""The agent as the platform runs it: `python agent.pyz train <round dir>` in a subprocess, from a
directory that is not the repository (so only the pyz's code can be imported)."""

import json
import os
import subprocess
import sys

import torch

from training.fl import wire
from training.fl.client import ClientTask, client_train


def run_agent(phone, *args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFLEET_")}
    env.pop("PYTHONPATH", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, str(phone.work_dir / "agent.pyz"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or phone.work_dir.parents[3],
        timeout=120,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, lines


def test_train_streams_progress_and_writes_update_and_result(phone):
    proc, lines = run_agent(phone, "train", str(phone.round_dir))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    progress = [e for e in lines if e["event"] == "progress"]
    assert lines[-1]["event"] == "done" and len(lines) == len(progress) + 1
    # 45 samples, B = 10 → 5 steps per epoch, 2 epochs
    assert [e["step"] for e in progress] == list(range(1, 11))
    assert [e["epoch"] for e in progress] == [1] * 5 + [2] * 5
    assert all(e["steps"] == 10 and e["loss"] > 0 for e in progress)

    result = phone.read_result()
    assert result["samples"] == 45 and result["steps"] == 10 and result["epochs_done"] == 2.0
    assert result["completed"] is True and result["stop_reason"] == "completed"
    assert result["round"] == 3 and result["client_id"] == "phone-a" and result["agent_version"]
    assert result["loss_after"] < result["loss_before"]
    assert set(result["timings"]) == {"load_s", "train_s", "compute_s", "write_s", "total_s"}
    assert lines[-1]["samples"] == 45 and lines[-1]["update_sha256"] == result["update_sha256"]

    expected = {k: (tuple(v.shape), v.dtype) for k, v in phone.weights.items()}
    update = wire.load_update(
        (phone.round_dir / "update.safetensors").read_bytes(),
        expected,
        max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES,
    )
    # the phone computed exactly what the same client code computes in-process
    local = client_train(ClientTask(phone.config, phone.weights, phone.x, phone.y))
    for name in expected:
        torch.testing.assert_close(update[name], local.delta[name], rtol=0, atol=1e-6)
    assert (phone.work_dir / "jobs" / "7" / "state").is_dir()  # the client state dir was created


def test_corrupt_config_exits_non_zero_with_a_message(phone):
    (phone.round_dir / "config.json").write_text("{not json")
    (phone.round_dir / "result.json").write_text("{}")  # stale output of an earlier attempt
    proc, lines = run_agent(phone, "train", str(phone.round_dir))
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0]["event"] == "error"
    assert "config.json is not valid JSON" in lines[0]["message"]
    assert not (phone.round_dir / "result.json").exists()
    assert not (phone.round_dir / "update.safetensors").exists()


def test_slowdown_stretches_training_time(phone):
    phone.write_config(epochs=4)
    proc, _ = run_agent(phone, "train", str(phone.round_dir), env_extra={"FEDFLEET_SLOWDOWN": "3"})
    assert proc.returncode == 0, proc.stdout
    timings = phone.read_result()["timings"]
    assert phone.read_result()["slowdown"] == 3.0
    # each step is followed by a sleep of 2× its own duration, so training takes at least 3× the compute
    assert timings["train_s"] >= 3 * timings["compute_s"]


def test_version_reports_the_build_hash(phone, agent_build):
    proc, lines = run_agent(phone, "version")
    assert proc.returncode == 0
    assert lines == [lines[0]] and lines[0]["event"] == "version"
    assert lines[0]["sha256"] == agent_build.sha256


def test_selftest_passes_and_needs_neither_django_nor_sklearn(phone):
    code = (
        "import sys, io; sys.path.insert(0, sys.argv[1]);"
        "from training.agent.cli import main; out = io.StringIO(); rc = main(['selftest'], stdout=out);"
        "banned = [m for m in ('django', 'sklearn') if m in sys.modules];"
        "print(rc, banned, out.getvalue().strip())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(phone.work_dir / "agent.pyz")],
        capture_output=True,
        text=True,
        cwd=phone.work_dir,
        timeout=120,
    )
    rc, banned, line = proc.stdout.split(" ", 2)
    assert (rc, banned) == ("0", "[]"), proc.stdout + proc.stderr
    assert json.loads(line)["ok"] is True
