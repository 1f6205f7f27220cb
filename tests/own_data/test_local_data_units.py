"""The agent's reading of a phone's own data files, and the files `phone_data_files` writes for phones."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.agent.local_data import load_local_data
from training.agent.round_config import AgentError, parse_config
from training.fl.data_formats.writers import write_npz

BASE = {
    "algorithm": "fedavg",
    "model": {"name": "mlp", "input_shape": [1, 2, 2], "num_classes": 3},
    "lr": 0.1,
}


def test_a_flat_npz_is_reshaped_to_the_model_input(tmp_path: Path) -> None:
    write_npz(
        tmp_path / "train.npz", np.arange(20, dtype=np.float64).reshape(5, 4), np.array([0, 1, 2, 1, 0])
    )
    x, y = load_local_data(tmp_path / "train.npz", input_shape=(1, 2, 2), num_classes=3, max_bytes=10_000)
    assert x.shape == (5, 1, 2, 2) and str(x.dtype) == "torch.float32" and y.tolist() == [0, 1, 2, 1, 0]


def test_csv_problems_are_all_named(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b,c,d,label\n1,2,3,nan,0\n1,2,3,4,7\n")
    with pytest.raises(AgentError) as caught:
        load_local_data(tmp_path / "train.csv", input_shape=(1, 2, 2), num_classes=3, max_bytes=10_000)
    text = str(caught.value)
    assert text.startswith("no usable data on this phone: train.csv:")
    assert "non-finite" in text and "labels must be class numbers 0..2" in text


def test_a_wrong_shape_and_a_size_limit_are_refused(tmp_path: Path) -> None:
    write_npz(tmp_path / "train.npz", np.zeros((4, 5)), np.zeros(4, dtype=np.int64))
    with pytest.raises(AgentError, match="holds 4 values, but samples have 5"):
        load_local_data(tmp_path / "train.npz", input_shape=(1, 2, 2), num_classes=3, max_bytes=10_000)
    with pytest.raises(AgentError, match="over 10"):
        load_local_data(tmp_path / "train.npz", input_shape=(1, 2, 2), num_classes=3, max_bytes=10)


def test_config_with_local_data_needs_no_shard_and_stays_in_the_work_dir(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("a,label\n1,0\n")
    config = parse_config({**BASE, "local_data": {"dir": "mine", "report": True}}, default_work_dir=tmp_path)
    assert config.shard == tmp_path / "mine" / "train.csv" and config.local_data is not None
    assert config.local_data.report
    with pytest.raises(AgentError, match="inside the work dir"):
        parse_config({**BASE, "local_data": {"dir": "../elsewhere"}}, default_work_dir=tmp_path)
    with pytest.raises(AgentError, match="missing required key 'shard'"):
        parse_config(BASE, default_work_dir=tmp_path)


@pytest.mark.django_db
def test_phone_data_files_writes_one_folder_per_phone(tmp_path: Path) -> None:
    from django.core.management import call_command  # noqa: PLC0415

    out = io.StringIO()
    call_command(
        "phone_data_files",
        out=str(tmp_path),
        phones=3,
        partition="dirichlet",
        partition_param=0.5,
        stdout=out,
    )
    sizes: list[Any] = json.loads(out.getvalue())["samples"]
    assert len(sizes) == 3 and sum(sizes) == 1437  # digits' training split
    for index, size in enumerate(sizes):
        with np.load(tmp_path / f"phone-{index:04d}" / "data" / "train.npz", allow_pickle=False) as arrays:
            assert arrays["x"].shape == (size, 1, 8, 8) and arrays["y"].shape == (size,)
