"""Each test of the influence package gets its own data dir: job ids restart with every test's database,
and a job's files (shards, checkpoints, the influence state) must not leak into the next test's job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from training.engine import jobdata


@pytest.fixture(autouse=True)
def own_data_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("browser"):
        yield  # workers, phones and Daphne were started with the session's data dir
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: more threads only contend
    settings: Any = request.getfixturevalue("settings")
    settings.FEDFLEET_DATA_DIR = tmp_path / "data"
    jobdata._DATA_CACHE.clear()
    jobdata._TOTAL_CACHE.clear()
    yield
    jobdata._DATA_CACHE.clear()
    jobdata._TOTAL_CACHE.clear()
    torch.set_num_threads(threads)
