"""AgentClient's pipelined requests against a real `agent.pyz serve`: several frames sent before the first
answer is read (put_files, remove_and_hash), answered in order, with the same results as one at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.serving import ServingAgent
from tests.agent.test_serve import start_agent
from training.agent import protocol as p


@pytest.fixture(scope="module")
def agent(agent_build, tmp_path_factory) -> Iterator[ServingAgent]:
    serving = start_agent(agent_build.path, tmp_path_factory.mktemp("pipelined"))
    serving.wait_serving()
    yield serving
    serving.stop()


def test_put_files_sends_every_frame_then_reads_the_answers(agent: ServingAgent, tmp_path: Path) -> None:
    local = []
    for index, size in enumerate((10, 3 * 1024 * 1024, 0)):
        path = tmp_path / f"f{index}"
        path.write_bytes(bytes([index + 1]) * size)
        local.append((f"jobs/7/rounds/round-1.0/f{index}", path))
    with agent.client() as client:
        answers = client.put_files(local)
        assert [a["size"] for a in answers] == [10, 3 * 1024 * 1024, 0]
        assert [a["sha256"] for a in answers] == [
            hashlib.sha256(p.read_bytes()).hexdigest() for _, p in local
        ]
        assert client.get("jobs/7/rounds/round-1.0/f1", max_bytes=1 << 23) == local[1][1].read_bytes()
        removed, hashes = client.remove_and_hash("jobs/7/rounds", ["jobs/7/rounds/round-1.0/f0", "jobs/7/x"])
        assert removed is True and hashes == {"jobs/7/rounds/round-1.0/f0": None, "jobs/7/x": None}
        removed, _ = client.remove_and_hash("jobs/7/rounds", [])
        assert removed is False
        # A bad path is refused before anything is sent: the connection stays usable.
        with pytest.raises(ValueError):
            client.put_files([("../escape", local[0][1])])
        assert client.hashes(["jobs/7/x"]) == {"jobs/7/x": None}


def test_a_failing_put_in_a_pipeline_is_reported_in_order(agent: ServingAgent, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"fine")
    with agent.client() as client:
        client.put("jobs/8/file", b"a file where a directory is wanted")
        with pytest.raises(p.AgentRequestFailed):
            client.put_files([("jobs/8/ok", good), ("jobs/8/file/inside", good)])
