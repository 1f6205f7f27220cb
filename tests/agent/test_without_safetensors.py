"""A phone with Termux's python and python-torch has no safetensors package: the agent reads the round's
files and writes its update with its own reader/writer (training/fl/safetensors_layout.py), and the
platform's library reads the result — the same update as with the package."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load as library_load

from tests.agent.serving import clean_env
from tests.agent.test_agent_e2e import run_agent

# What a Python without the package sees: `import safetensors` fails. Then the pyz runs as `python
# agent.pyz ...` would run it.
WITHOUT_SAFETENSORS = (
    "import runpy, sys\n"
    "sys.modules['safetensors'] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def test_the_agent_trains_without_the_package_and_the_library_reads_its_update(phone) -> None:
    proc, with_library = run_agent(phone, "train", str(phone.round_dir))
    assert proc.returncode == 0, proc.stdout
    expected = library_load((phone.round_dir / "update.safetensors").read_bytes())

    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_SAFETENSORS,
            str(phone.work_dir / "agent.pyz"),
            "train",
            str(phone.round_dir),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=phone.work_dir.parents[3],
        timeout=120,
    )
    assert bare.returncode == 0, bare.stdout + bare.stderr
    lines = [json.loads(line) for line in bare.stdout.splitlines()]
    assert lines[-1]["event"] == "done"
    # the same progress, and an update the platform's library reads, equal to the library-made one
    assert [line["loss"] for line in lines if line["event"] == "progress"] == [
        line["loss"] for line in with_library if line["event"] == "progress"
    ]
    update = library_load((phone.round_dir / "update.safetensors").read_bytes())
    assert set(update) == set(expected)
    for name in expected:
        assert torch.equal(update[name], expected[name]), name


def test_the_pure_layout_is_what_the_bare_agent_uses(phone) -> None:
    code = WITHOUT_SAFETENSORS.replace(
        "runpy.run_path(sys.argv[0], run_name='__main__')\n",
        "sys.path.insert(0, sys.argv[0]); from training.fl import wire; print(wire.HAVE_SAFETENSORS)\n",
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(phone.work_dir / "agent.pyz")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr
