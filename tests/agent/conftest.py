"""Fixtures for the on-device agent: a built agent.pyz and a phone-like work dir with one round."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from training.agent.build import build_agent_pyz
from training.fl import nets, wire

torch.set_num_threads(1)

MODEL = nets.model_spec_for("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])


@pytest.fixture(scope="session")
def agent_build(tmp_path_factory):
    return build_agent_pyz(tmp_path_factory.mktemp("build"))


@dataclass
class Phone:
    work_dir: Path
    round_dir: Path
    config: dict
    x: torch.Tensor
    y: torch.Tensor
    weights: dict

    def write_config(self, **changes):
        self.config.update(changes)
        (self.round_dir / "config.json").write_text(json.dumps(self.config))

    def read_result(self):
        return json.loads((self.round_dir / "result.json").read_text())


@pytest.fixture
def phone(tmp_path, agent_build):
    """<work>/agent.pyz, <work>/jobs/7/shard.safetensors, <work>/rounds/3/{config.json, global.safetensors}.
    Config paths are relative, as the platform writes them: they resolve against the pyz's directory."""
    work = tmp_path / "phone" / "data" / "local" / "tmp" / "fedfleet"
    (work / "jobs" / "7").mkdir(parents=True)
    shutil.copy(agent_build.path, work / "agent.pyz")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(45, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (45,), generator=g)
    wire.save_tensors(work / "jobs" / "7" / "shard.safetensors", {"x": x, "y": y})
    round_dir = work / "rounds" / "3"
    round_dir.mkdir(parents=True)
    weights = nets.initial_weights(MODEL, seed=1)
    wire.save_tensors(round_dir / "global.safetensors", weights)
    config = {
        "algorithm": "fedprox",
        "model": MODEL,
        "lr": 0.1,
        "epochs": 2,
        "batch_size": 10,
        "mu": 0.01,
        "seed": 42,
        "shard": "jobs/7/shard.safetensors",
        "state_dir": "jobs/7/state",
        "round": 3,
        "client_id": "phone-a",
    }
    p = Phone(work, round_dir, config, x, y, weights)
    p.write_config()
    return p
