"""`agent.pyz serve`: a real agent process on a loopback port, driven by the platform's AgentClient.

It must do what exec mode does (the same update bytes for the same round), keep the shard in memory,
stop a cancelled train within a second, give a wrong secret nothing, upgrade itself, and survive any
frame. The in-process server (same code, no subprocess) takes the many-example hypothesis runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.ports import free_port
from tests.agent.serving import SECRET, ServingAgent, clean_env
from tests.agent.test_agent_e2e import run_agent
from tests.conftest import wait_until
from training.agent import protocol as p
from training.agent.build import pyz_bytes
from training.agent.serve import AgentServer, ServeConfig, ServeError, battery_status, free_memory_bytes
from training.fl import wire


def start_agent(pyz: Path, root: Path, **env: str) -> ServingAgent:
    work = root / "fedfleet"
    work.mkdir(parents=True)
    shutil.copy(pyz, work / "agent.pyz")
    agent = ServingAgent(work / "agent.pyz", work, free_port(), secret=SECRET, env=clean_env(**env))
    agent.wait_serving()
    return agent


@pytest.fixture(scope="module")
def agent(agent_build, tmp_path_factory) -> Iterator[ServingAgent]:
    serving = start_agent(agent_build.path, tmp_path_factory.mktemp("resident"))
    yield serving
    serving.stop()


def put_round(client: p.AgentClient, phone, job: str, **config_changes) -> str:
    """The phone fixture's round, put under jobs/<job>/ as the platform lays a job out."""
    config = dict(phone.config, shard=f"jobs/{job}/shard.safetensors", state_dir=f"jobs/{job}/state")
    config.update(config_changes)
    round_dir = f"jobs/{job}/rounds/round-1.0"
    client.put_file(f"jobs/{job}/shard.safetensors", phone.work_dir / "jobs" / "7" / "shard.safetensors")
    client.put(f"{round_dir}/global.safetensors", (phone.round_dir / "global.safetensors").read_bytes())
    client.put(f"{round_dir}/config.json", json.dumps(config).encode())
    return round_dir


def idle(agent: ServingAgent) -> bool:
    with agent.client() as client:
        return not client.hello_info.busy


# --- what exec mode does, resident ---------------------------------------------------------------
def test_hello_describes_the_agent(agent: ServingAgent, agent_build) -> None:
    with agent.client() as client:
        hello = client.hello_info
    assert hello.protocol == p.PROTOCOL_VERSION and hello.agent_version
    assert hello.sha256 == agent_build.sha256
    assert hello.torch == torch.__version__ and hello.python.count(".") == 2
    assert hello.busy is False and hello.raw["pid"] == agent.process.pid
    assert hello.free_memory_bytes is None or hello.free_memory_bytes > 0


def test_a_round_trains_as_in_exec_mode(agent: ServingAgent, phone) -> None:
    with agent.client() as client:
        round_dir = put_round(client, phone, "11")
        with pytest.raises(p.AgentRequestFailed, match="not_found") as not_trained:
            client.result(round_dir, max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES)
        assert not_trained.value.details == {"name": "result.json"}
        events: list[dict] = []
        done = client.train(round_dir, on_event=events.append)
        result = client.result(round_dir, max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES)

    proc, exec_lines = run_agent(phone, "train", str(phone.round_dir))
    assert proc.returncode == 0, proc.stdout
    exec_progress = [line for line in exec_lines if line["event"] == "progress"]

    def shape(lines):
        return [(e["event"], e["epoch"], e["step"], e["steps"], e["loss"]) for e in lines]

    assert shape(events) == shape(exec_progress)  # the same lines, streamed as they happen
    assert done["event"] == "done" and done["samples"] == 45 and done["steps"] == 10
    assert json.loads(result.result_json)["update_sha256"] == hashlib.sha256(result.update).hexdigest()
    expected = {k: (tuple(v.shape), v.dtype) for k, v in phone.weights.items()}
    resident = wire.load_update(result.update, expected, max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES)
    executed = wire.load_update(
        (phone.round_dir / "update.safetensors").read_bytes(),
        expected,
        max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES,
    )
    for name in expected:
        assert torch.equal(resident[name], executed[name]), name
    # the files are where exec mode keeps them, in the agent's work dir
    assert (agent.work_dir / round_dir / "update.safetensors").read_bytes() == result.update
    assert (agent.work_dir / "jobs" / "11" / "state").is_dir()


def test_the_next_round_reuses_the_shard_in_memory(agent: ServingAgent, phone) -> None:
    with agent.client() as client:
        round_dir = put_round(client, phone, "12")
        client.train(round_dir)
        shard = agent.work_dir / "jobs" / "12" / "shard.safetensors"
        info = shard.stat()
        # Overwrite in place (same inode, size and mtime): only a process that kept the tensors can train.
        with shard.open("r+b") as handle:
            handle.write(b"\xff" * info.st_size)
        os.utime(shard, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert client.train(round_dir)["samples"] == 45
        # A new shard (the platform pushed another one) is read again: this one is garbage.
        shard.write_bytes(b"\xff" * info.st_size)
        with pytest.raises(p.AgentRequestFailed, match="data shard") as failed:
            client.train(round_dir)
        assert failed.value.code == "failed"


def test_request_runs_the_submodel_index_request_path(agent: ServingAgent, phone) -> None:
    with agent.client() as client:
        round_dir = put_round(client, phone, "13")
        # The MLP job is not a submodel job: the request path runs and reports the agent's own error.
        with pytest.raises(p.AgentRequestFailed) as failed:
            client.request(round_dir)
        assert failed.value.code == "failed" and failed.value.message


def test_get_put_remove_stay_inside_the_work_dir(agent: ServingAgent, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent.work_dir / "jobs").mkdir(exist_ok=True)
    link = agent.work_dir / "jobs" / "link"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    with agent.client() as client:
        assert client.put("jobs/20/a.json", b'{"a": 1}')["sha256"] == hashlib.sha256(b'{"a": 1}').hexdigest()
        assert client.get("jobs/20/a.json", max_bytes=100) == b'{"a": 1}'
        with pytest.raises(p.AgentRequestFailed, match="too_large") as too_large:
            client.get("jobs/20/a.json", max_bytes=3)
        assert too_large.value.details == {"name": "jobs/20/a.json", "size": 8}
        with pytest.raises(p.AgentRequestFailed, match="not_found"):
            client.get("jobs/20/missing", max_bytes=3)
        for bad in ("jobs/link/x", "agent.pyz"):
            with pytest.raises(p.AgentRequestFailed, match="invalid"):
                client.put(bad, b"x")
        # The client refuses bad paths itself; the agent refuses them too when a client does not.
        with pytest.raises(ValueError):
            client.put("../evil", b"x")
        rid = client._request({"type": "put", "path": "../evil", "size": 1}, payload=b"x")
        with pytest.raises(p.AgentRequestFailed, match="invalid"):
            client._answer(rid, "ok")
        assert client.get("jobs/20/a.json", max_bytes=100)  # and the connection goes on
    assert not (agent.work_dir.parent / "evil").exists() and list(outside.iterdir()) == []
    with agent.client() as client:
        digests = client.hashes(["jobs/20/a.json", "jobs/20/none", "jobs"])
        assert digests == {
            "jobs/20/a.json": hashlib.sha256(b'{"a": 1}').hexdigest(),
            "jobs/20/none": None,
            "jobs": None,
        }
        assert client.remove("jobs/20") is True and client.remove("jobs/20") is False
    assert not (agent.work_dir / "jobs" / "20").exists()


# --- cancel, busy, connections -------------------------------------------------------------------
def test_cancel_stops_a_train_within_a_second(agent: ServingAgent, phone) -> None:
    with agent.client() as client:
        round_dir = put_round(client, phone, "30", epochs=20000)
        cancel_at: list[float] = []
        events: list[dict] = []

        def should_cancel() -> bool:
            if len(events) >= 3 and not cancel_at:
                cancel_at.append(time.monotonic())
            return bool(cancel_at)

        with pytest.raises(p.AgentCancelled, match="cancelled after"):
            client.train(round_dir, on_event=events.append, should_cancel=should_cancel, poll_s=0.05)
        stopped = time.monotonic() - cancel_at[0]
        assert stopped < 1.0, f"the train went on for {stopped:.2f} s after cancel"
        assert not (agent.work_dir / round_dir / "result.json").exists()
        # the same connection goes on, and the agent is free again
        assert client.put(
            f"{round_dir}/config.json",
            json.dumps(dict(phone.config, shard="jobs/30/shard.safetensors")).encode(),
        )
        assert client.train(round_dir)["event"] == "done"


def test_cancel_from_another_connection_and_busy(agent: ServingAgent, phone) -> None:
    with agent.client() as trainer, agent.client() as other:
        round_dir = put_round(trainer, phone, "31", epochs=20000)
        rid = trainer._request({"type": "train", "round_dir": round_dir})
        first, _ = trainer._read(30)
        assert first["type"] == "event" and first["id"] == rid
        with pytest.raises(p.AgentRequestFailed, match="busy"):
            other.train(round_dir)
        assert other.cancel() is True
        with pytest.raises(p.AgentCancelled):
            trainer._follow(rid, None, None, 1.0, 10.0)
        assert other.cancel() is False


def test_a_dropped_connection_cancels_its_train(agent: ServingAgent, phone) -> None:
    client = agent.client()
    round_dir = put_round(client, phone, "32", epochs=20000)
    client._request({"type": "train", "round_dir": round_dir})
    assert client._read(30)[0]["type"] == "event"
    mark = len(agent.lines)
    client.close()
    agent.wait_for(lambda line: line.get("event") in {"connection_closed", "task_aborted"}, after=mark)
    wait_until(lambda: idle(agent), timeout_s=5, what="the agent to drop the orphaned train")


# --- authentication ------------------------------------------------------------------------------
def receive_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def hello_frame(secret: bytes, nonce: bytes | None = None) -> bytes:
    session = p.Session(p.hello_key(secret), sending=p.CLIENT)
    nonce = nonce or os.urandom(p.NONCE_BYTES)
    return p.encode_frame(session, {"type": "hello", "protocol": p.PROTOCOL_VERSION, "nonce": nonce.hex()})


@pytest.mark.parametrize(
    "opening",
    [
        hello_frame(b"not-the-phone-secret-at-all"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 100,
        p.PREFIX.pack(p.MAGIC, 10**6, 0),  # an unauthenticated peer may not make us read a big header
    ],
    ids=["wrong-secret", "http", "zeros", "huge-header"],
)
def test_a_wrong_or_missing_secret_gets_nothing(agent: ServingAgent, opening: bytes) -> None:
    with agent.socket(timeout_s=15) as sock:
        sock.sendall(opening)
        assert receive_all(sock) == b""
    with pytest.raises(p.AgentRefused):
        agent.client("another-secret-of-16+chars")
    assert idle(agent)  # and the agent serves the right secret as before


def test_a_replayed_hello_gets_nothing(agent: ServingAgent) -> None:
    frame = hello_frame(SECRET.encode())
    with agent.socket() as first:
        first.sendall(frame)
        assert p.PREFIX.size < len(first.recv(65536))  # the genuine one is answered
    with agent.socket(timeout_s=15) as second:
        second.sendall(frame)
        assert receive_all(second) == b""


# --- upgrade ---------------------------------------------------------------------------------------
def newer_agent(agent_build) -> bytes:
    with zipfile.ZipFile(agent_build.path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["training/agent/upgrade_marker.py"] = b"MARKER = 2\n"
    return pyz_bytes(files)


def test_upgrade_checks_the_hash_replaces_the_archive_and_reexecs(agent_build, tmp_path: Path) -> None:
    serving = start_agent(agent_build.path, tmp_path)
    try:
        new = newer_agent(agent_build)
        with serving.client() as client:
            rid = client._request({"type": "upgrade", "sha256": "0" * 64, "size": len(new)}, payload=new)
            with pytest.raises(p.AgentRequestFailed, match="sha256"):
                client._answer(rid, "ok")
            with pytest.raises(p.AgentRequestFailed, match="not an agent.pyz"):
                client.upgrade(b"#!/usr/bin/env python3\nprint('no zip')\n")
            assert (serving.work_dir / "agent.pyz").read_bytes() == agent_build.path.read_bytes()
            mark = len(serving.lines)
            answer = client.upgrade(new)
            assert answer["sha256"] == hashlib.sha256(new).hexdigest() and answer["restarting"] is True
            with pytest.raises(p.AgentConnectionLost):
                client.cancel()  # the old process closed its connections before re-executing
        restarted = serving.wait_serving(after=mark)
        assert restarted["pid"] == serving.process.pid  # the same process, re-executed
        assert restarted["sha256"] == hashlib.sha256(new).hexdigest()
        assert (serving.work_dir / "agent.pyz").read_bytes() == new
        client = wait_until(lambda: _try_client(serving), timeout_s=30, what="the upgraded agent")
        with client:
            assert client.hello_info.sha256 == hashlib.sha256(new).hexdigest()
    finally:
        serving.stop()


def _try_client(serving: ServingAgent) -> p.AgentClient | None:
    try:
        return serving.client()
    except (OSError, p.AgentClientError):
        return None


# --- the same server in-process: timeouts, limits and hypothesis -------------------------------------
class InProcess:
    def __init__(self, work_dir: Path, **overrides) -> None:
        port = 7000 if "loopback_dir" in overrides else free_port()  # a registry maps phone port 7000
        config = ServeConfig(port=port, secret=SECRET.encode(), work_dir=work_dir, **overrides)
        self.log: list[str] = []
        self.server = AgentServer(config, environ={}, log=_ListLog(self.log), archive=None)
        self.server.bind()
        self.port = self.server.bound_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def socket(self, timeout_s: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)

    def client(self) -> p.AgentClient:
        client = p.AgentClient(self.socket(), SECRET, timeout_s=10)
        client.hello()
        return client

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)


class _ListLog:
    def __init__(self, sink: list[str]) -> None:
        self._sink = sink

    def write(self, text: str) -> int:
        self._sink.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory) -> Iterator[InProcess]:
    server = InProcess(tmp_path_factory.mktemp("inprocess"), handshake_timeout_s=0.5)
    yield server
    server.stop()


def test_a_silent_peer_is_dropped_after_the_handshake_timeout(inprocess: InProcess) -> None:
    started = time.monotonic()
    with inprocess.socket() as sock:
        sock.sendall(hello_frame(SECRET.encode())[:10])  # a hello that never completes
        assert receive_all(sock) == b""
    assert time.monotonic() - started < 5


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path: Path) -> None:
    server = InProcess(tmp_path, max_connections=2, handshake_timeout_s=3)
    try:
        held = [server.socket(), server.socket()]
        wait_until(lambda: not server.server._slots._value, timeout_s=5, what="both slots taken")
        with server.socket() as third:
            assert receive_all(third) == b""
        for sock in held:
            sock.close()
        wait_until(lambda: _try_inprocess(server), timeout_s=10, what="a free slot again")
    finally:
        server.stop()


def _try_inprocess(server: InProcess) -> bool:
    try:
        server.client().close()
        return True
    except (OSError, p.AgentClientError):
        return False


def test_virtual_loopback_registry_maps_the_phone_port(tmp_path: Path) -> None:
    registry = tmp_path / "loopback"
    first = InProcess(tmp_path, loopback_dir=registry)
    try:
        entry = registry / "7000"
        assert int(entry.read_text()) == first.port != 7000
        second = AgentServer(
            ServeConfig(port=7000, secret=SECRET.encode(), work_dir=tmp_path, loopback_dir=registry),
            environ={},
            log=_ListLog([]),
            archive=None,
        )
        with pytest.raises(ServeError, match="Address already in use"):
            second.bind()
    finally:
        first.stop()
    assert not entry.exists()  # a clean stop unregisters the port


def test_phone_facts_are_read_when_readable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 5814264 kB\nMemAvailable:    2048 kB\n")
    assert free_memory_bytes(meminfo) == 2048 * 1024
    assert free_memory_bytes(tmp_path / "nothing") is None
    supply = tmp_path / "power_supply"
    (supply / "usb").mkdir(parents=True)
    (supply / "usb" / "type").write_text("USB\n")
    (supply / "battery").mkdir()
    (supply / "battery" / "type").write_text("Battery\n")
    (supply / "battery" / "capacity").write_text("67\n")
    (supply / "battery" / "status").write_text("Charging\n")
    assert battery_status(supply) == {"level": 67, "status": "Charging"}
    (supply / "battery" / "capacity").write_text("9000\n")
    assert battery_status(supply) is None
    assert battery_status(tmp_path / "none") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(min_size=1, max_size=400)
    | st.builds(lambda tail: p.PREFIX.pack(p.MAGIC, 40, 0) + tail, st.binary(max_size=100))
)
def test_garbage_before_authentication_gets_no_byte_and_harms_nothing(
    inprocess: InProcess, data: bytes
) -> None:
    with inprocess.socket() as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert receive_all(sock) == b""
    assert inprocess.thread.is_alive()


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_headers = st.fixed_dictionaries(
    {"type": st.sampled_from([*p.REQUESTS, "shell", ""])},
    optional={
        "id": st.integers(-5, 2**54) | st.text(max_size=3),
        "path": st.sampled_from(["a", "../a", "/etc/passwd", "a/b", "x" * 600, ".git"])
        | st.text(max_size=10),
        "round_dir": st.sampled_from(["r", "../r", "jobs/1/rounds/round-1.0"]),
        "size": st.integers(-1, 10),
        "max_bytes": st.integers(-1, 10**12),
        "sha256": st.text(max_size=70),
        "nonce": st.text(max_size=40),
        "protocol": st.integers(-1, 3),
        "extra": _json_values,
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_headers, payload=st.binary(max_size=16), raw_tail=st.binary(max_size=64))
def test_authenticated_nonsense_closes_only_that_connection(
    inprocess: InProcess, header: dict, payload: bytes, raw_tail: bytes
) -> None:
    """Well-authenticated frames with any header, then any bytes: the agent answers or closes that
    connection, and a fresh client is served as before."""
    client = inprocess.client()
    try:
        client._sock.sendall(p.encode_frame(client._session, header, payload) + raw_tail)
        client._sock.settimeout(5)
        client._sock.shutdown(socket.SHUT_WR)
        while client._sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        client.close()
    inprocess.server.cancel_task()
    with inprocess.client() as fresh:
        assert fresh.hello_info.protocol == p.PROTOCOL_VERSION
