"""scripts/demo.py hands the lab to config/supervisor.py: which programs, in which order, and Redis
restarted on its own port and data dir (append-only file) and stopped last."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from config.local_redis import start_local_redis

REPO = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedfleet_demo", REPO / "scripts" / "demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lab_without_its_own_redis() -> None:
    programs = load_demo().lab_programs({"X": "1"}, None)
    assert [p.name for p in programs] == ["web", "devices", "training", "beat", "lab"]
    for program in programs:
        assert Path(program.argv[0]).is_file(), program.argv
        assert program.env == {"X": "1"} and program.cwd == REPO
        assert not program.stop_last


@pytest.mark.integration
def test_the_demos_redis_restarts_on_its_port_and_data_dir_and_stops_last(tmp_path: Path) -> None:
    redis = start_local_redis(tmp_path / "redis", new_session=True)
    try:
        programs = load_demo().lab_programs({}, redis)
        first = programs[0]
        assert first.name == "redis" and first.stop_last and first.ready is not None
        argv = list(first.argv)
        assert argv[argv.index("--port") + 1] == str(redis.port)
        assert argv[argv.index("--dir") + 1] == str(redis.data_dir)
        assert argv[argv.index("--appendonly") + 1] == "yes"
        assert first.ready()  # answers PING while it runs
        redis.stop()
        assert not first.ready()
    finally:
        redis.stop()
