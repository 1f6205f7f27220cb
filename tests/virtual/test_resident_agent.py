"""A stock virtual phone whose Termux-like app runs `agent.pyz serve`, reached the way the platform will:
devices/adb.py's `tcp:` stream over the real ADB protocol, with training.agent.protocol.AgentClient on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import adb
from devices.adb_identity import AdbIdentity
from devices.virtual.lab import LabThread, PhoneEndpoint
from devices.virtual.profile import stock_android
from tests.agent.serving import tiny_job
from tests.virtual.conftest import connect, wait_for
from training.agent import protocol as p
from training.agent.build import AgentBuild, build_agent_pyz, pyz_bytes
from training.fl import wire

AGENT_START_S = 90.0  # the app's agent imports torch on a shared 2-core machine


@pytest.fixture(scope="session")
def agent_pyz(tmp_path_factory: pytest.TempPathFactory) -> AgentBuild:
    return build_agent_pyz(tmp_path_factory.mktemp("agent-build"))


@pytest.fixture(scope="module")
def app_lab(start_lab, keys_file: Path, agent_pyz: AgentBuild) -> LabThread:
    return start_lab(
        [stock_android(serial="vt-app", speed_factor=1.0)], keys_file=keys_file, agent_pyz=agent_pyz.path
    )


@pytest.fixture(scope="module")
def phone(app_lab: LabThread, identity: AdbIdentity) -> Iterator[adb.AdbConnection]:
    with connect(app_lab.endpoints[0], identity) as connection:
        yield connection


def open_agent_stream(
    conn: adb.AdbConnection, port: int, *, timeout_s: float = AGENT_START_S
) -> adb.DeviceStream:
    """tcp:<port>, retried while the app's agent is still starting (refused until it listens)."""

    def attempt() -> adb.DeviceStream | None:
        try:
            return conn.open_stream(f"tcp:{port}", timeout_s=30)
        except adb.StreamRefused:
            return None

    return wait_for(attempt, timeout_s=timeout_s, what=f"the app's agent on tcp:{port}")


def agent_client(
    conn: adb.AdbConnection, endpoint: PhoneEndpoint, secret: str | None = None
) -> p.AgentClient:
    assert endpoint.agent_port is not None and endpoint.agent_secret
    client = p.AgentClient(
        open_agent_stream(conn, endpoint.agent_port), secret or endpoint.agent_secret, timeout_s=30
    )
    client.hello()
    return client


def put_job(client: p.AgentClient, job: str, **kwargs) -> tuple[str, dict]:
    files, round_dir, expected = tiny_job(job, **kwargs)
    for path, data in files.items():
        assert client.put(path, data)["sha256"] == hashlib.sha256(data).hexdigest()
    return round_dir, expected


def test_a_round_over_the_tcp_stream(
    app_lab: LabThread, phone: adb.AdbConnection, agent_pyz: AgentBuild
) -> None:
    endpoint = app_lab.endpoints[0]
    with agent_client(phone, endpoint) as client:
        hello = client.hello_info
        assert hello.sha256 == agent_pyz.sha256 and hello.busy is False
        round_dir, expected = put_job(client, "a")
        assert client.hashes([f"{round_dir}/config.json", "jobs/a/none"])["jobs/a/none"] is None
        events: list[dict] = []
        done = client.train(round_dir, on_event=events.append, timeout_s=120)
        assert [e["step"] for e in events] == list(range(1, 11)) and all(
            e["event"] == "progress" for e in events
        )
        assert done["samples"] == 45 and done["completed"] is True
        result = client.result(round_dir, max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES)
        update = wire.load_update(result.update, expected, max_bytes=wire.DEFAULT_MAX_UPDATE_BYTES)
        assert set(update) == set(expected)
    # The app's files are in its work dir on shared storage, which the shell sees too.
    listing = phone.shell(f"ls /sdcard/fedfleet/{round_dir}").split()
    assert {"config.json", "global.safetensors", "update.safetensors", "result.json"} <= set(listing)
    assert phone.shell("echo the connection is fine").strip() == "the connection is fine"


def test_cancel_stops_the_app_agent_within_a_second(app_lab: LabThread, phone: adb.AdbConnection) -> None:
    with agent_client(phone, app_lab.endpoints[0]) as client:
        round_dir, _ = put_job(client, "b", epochs=20000)
        events: list[dict] = []
        cancel_at: list[float] = []

        def should_cancel() -> bool:
            if len(events) >= 2 and not cancel_at:
                cancel_at.append(time.monotonic())
            return bool(cancel_at)

        with pytest.raises(p.AgentCancelled):
            client.train(round_dir, on_event=events.append, should_cancel=should_cancel, poll_s=0.05)
        stopped = time.monotonic() - cancel_at[0]
        assert stopped < 1.0, f"the train went on {stopped:.2f} s after cancel"
        assert client.hashes([f"{round_dir}/result.json"]) == {f"{round_dir}/result.json": None}


def test_a_wrong_secret_gets_nothing_over_adb(app_lab: LabThread, phone: adb.AdbConnection) -> None:
    endpoint = app_lab.endpoints[0]
    with pytest.raises(p.AgentRefused):
        agent_client(phone, endpoint, secret="0123456789-not-this-phone")
    with open_agent_stream(phone, endpoint.agent_port or 0) as stream:
        stream.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
        stream.settimeout(20)
        assert stream.recv(100) == b""  # closed, without a byte
    with agent_client(phone, endpoint) as client:  # and the right one still works
        assert client.hello_info.protocol == p.PROTOCOL_VERSION


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300), authenticated=st.booleans())
def test_malformed_frames_never_take_the_agent_down(
    app_lab: LabThread, phone: adb.AdbConnection, garbage: bytes, authenticated: bool
) -> None:
    endpoint = app_lab.endpoints[0]
    if authenticated:
        client = agent_client(phone, endpoint)
        stream = client._sock
    else:
        stream = open_agent_stream(phone, endpoint.agent_port or 0)
    with stream:
        # Padding past the largest header: whatever frame the garbage starts, the agent can judge it.
        with contextlib.suppress(adb.StreamLost):  # the agent may close before it has all of it
            stream.sendall(garbage + bytes(p.PREFIX.size + p.TAG_BYTES + p.MAX_HEADER_BYTES + 1))
        stream.settimeout(20)
        received = b""
        while chunk := stream.recv(65536):  # the agent ends the connection (an error frame at most)
            received += chunk
        assert authenticated or received == b""
    with agent_client(phone, endpoint) as fresh:
        assert fresh.hello_info.busy is False
    assert app_lab.lab.phone("vt-app").app_agent_running


def test_a_killed_app_agent_is_refused_until_started_again(
    app_lab: LabThread, phone: adb.AdbConnection, agent_pyz: AgentBuild
) -> None:
    endpoint = app_lab.endpoints[0]
    vphone = app_lab.lab.phone("vt-app")
    with agent_client(phone, endpoint) as client:
        old_pid = client.hello_info.raw["pid"]
    app_lab.call(lambda _: vphone.stop_app_agent())
    assert not vphone.app_agent_running
    with pytest.raises(adb.StreamRefused):  # "agent not running": nothing listens on the phone's port
        phone.open_stream(f"tcp:{endpoint.agent_port}")
    app_lab.call(lambda _: vphone.start_app_agent())
    with agent_client(phone, endpoint) as client:
        assert client.hello_info.raw["pid"] != old_pid and client.hello_info.sha256 == agent_pyz.sha256


def test_upgrade_over_the_stream(
    start_lab, keys_file: Path, identity: AdbIdentity, agent_pyz: AgentBuild
) -> None:
    lab = start_lab([stock_android(serial="vt-upgrade")], keys_file=keys_file, agent_pyz=agent_pyz.path)
    endpoint = lab.endpoints[0]
    with zipfile.ZipFile(agent_pyz.path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["training/agent/upgrade_marker.py"] = b"NEWER = True\n"
    newer = pyz_bytes(files)
    digest = hashlib.sha256(newer).hexdigest()
    with connect(endpoint, identity) as conn:
        with agent_client(conn, endpoint) as client:
            pid = client.hello_info.raw["pid"]
            with pytest.raises(p.AgentRequestFailed, match="not an agent.pyz"):
                client.upgrade(b"not a zip")
            assert client.upgrade(newer) == {"type": "ok", "id": 2, "sha256": digest, "restarting": True}
        with agent_client(conn, endpoint) as client:  # waits while the new agent starts
            assert client.hello_info.sha256 == digest and client.hello_info.raw["pid"] == pid
        assert conn.shell("sha256sum /sdcard/fedfleet/agent.pyz").split()[0] == digest
