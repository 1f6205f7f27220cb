"""Google's adb command-line client (Debian's `adb`) against virtual phones.

adb gets its own HOME (so its key is ours, in tmp) and its own server port; its server is killed after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.ports import free_port
from devices.adb_identity import AdbIdentity, load_or_create_identity
from devices.virtual.lab import LabThread
from devices.virtual.profile import PhoneProfile, stock_android
from tests.virtual.conftest import wait_for
from training.agent.build import build_agent_pyz
from training.agent.protocol import AgentClient, AgentClientError, AgentRefused

pytestmark = pytest.mark.skipif(shutil.which("adb") is None, reason="Google's adb client is not on PATH")


class GoogleAdb:
    def __init__(self, home: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(port))

    def __call__(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["adb", *args], env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def state_of(self, address: str) -> str:
        for line in self("devices").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == address:
                return fields[1]
        return ""


@pytest.fixture(scope="module")
def google_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AdbIdentity]:
    home = tmp_path_factory.mktemp("adb-home")
    return home, load_or_create_identity(home / ".android" / "adbkey")  # the key adb itself will use


@pytest.fixture(scope="module")
def google_adb(google_home: tuple[Path, AdbIdentity]) -> Iterator[GoogleAdb]:
    client = GoogleAdb(google_home[0])
    started = client("start-server")
    assert started.returncode == 0, started.stderr
    yield client
    client("kill-server", timeout_s=30)


@pytest.fixture(scope="module")
def trusting_lab(start_lab, google_home: tuple[Path, AdbIdentity], tmp_path_factory) -> LabThread:
    keys = tmp_path_factory.mktemp("google-keys") / "adb_keys"
    keys.write_text(google_home[1].public_key + "\n")
    return start_lab([PhoneProfile(serial="vt-google", model="Pixel 7")], keys_file=keys)


def test_connect_devices_shell_push_pull(
    google_adb: GoogleAdb, trusting_lab: LabThread, tmp_path: Path
) -> None:
    address = trusting_lab.endpoints[0].address
    connected = google_adb("connect", address)
    assert f"connected to {address}" in connected.stdout, connected.stdout + connected.stderr
    assert wait_for(lambda: google_adb.state_of(address) == "device", what="adb devices to show 'device'")

    shell = google_adb("-s", address, "shell", "getprop", "ro.product.model")
    assert shell.returncode == 0 and shell.stdout == "Pixel 7\n"

    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    pushed = google_adb("-s", address, "push", str(source), "/data/local/tmp/payload.bin")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    phone_copy = trusting_lab.endpoints[0].sandbox / "data" / "local" / "tmp" / "payload.bin"
    assert phone_copy.read_bytes() == source.read_bytes()

    back = tmp_path / "back.bin"
    pulled = google_adb("-s", address, "pull", "/data/local/tmp/payload.bin", str(back))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()

    listing = google_adb("-s", address, "shell", "ls", "/data/local/tmp/")
    assert "payload.bin" in listing.stdout.split()


def test_untrusted_key_shows_unauthorized(
    google_adb: GoogleAdb, start_lab, identity: AdbIdentity, tmp_path
) -> None:
    keys = tmp_path / "adb_keys"
    keys.write_text(identity.public_key + "\n")  # trusts the session key, not adb's
    lab = start_lab([PhoneProfile(serial="vt-locked")], keys_file=keys)
    address = lab.endpoints[0].address
    connected = google_adb("connect", address)
    assert "failed to authenticate" in connected.stdout + connected.stderr
    assert wait_for(lambda: google_adb.state_of(address) == "unauthorized", what="adb devices: unauthorized")
    refused = google_adb("-s", address, "shell", "echo", "hi")
    assert refused.returncode != 0 and "unauthorized" in refused.stderr


def test_adb_forward_reaches_the_agent_in_a_stock_phones_app(
    google_adb: GoogleAdb, google_home: tuple[Path, AdbIdentity], start_lab, tmp_path: Path
) -> None:
    """`adb forward tcp:L tcp:7000` is the host side of the phone's tcp: service: Google's adb server opens
    tcp:7000 on the phone for each connection to L, and the app's agent answers through it."""
    keys = tmp_path / "adb_keys"
    keys.write_text(google_home[1].public_key + "\n")
    build = build_agent_pyz(tmp_path / "build")
    lab = start_lab([stock_android(serial="vt-forward")], keys_file=keys, agent_pyz=build.path)
    endpoint = lab.endpoints[0]
    connected = google_adb("connect", endpoint.address)
    assert f"connected to {endpoint.address}" in connected.stdout, connected.stdout + connected.stderr
    assert wait_for(lambda: google_adb.state_of(endpoint.address) == "device", what="adb devices: device")
    local = free_port()
    forwarded = google_adb("-s", endpoint.address, "forward", f"tcp:{local}", f"tcp:{endpoint.agent_port}")
    assert forwarded.returncode == 0, forwarded.stderr
    assert f"tcp:{local} tcp:{endpoint.agent_port}" in google_adb("forward", "--list").stdout

    def hello() -> AgentClient | None:
        try:
            client = AgentClient(
                socket.create_connection(("127.0.0.1", local), timeout=30), endpoint.agent_secret or ""
            )
            client.hello()  # refused (adb closes the socket) until the app's agent listens
            return client
        except (OSError, AgentClientError):
            return None

    with wait_for(hello, timeout_s=90, what="the app's agent through adb forward") as client:
        assert client.hello_info.sha256 == build.sha256
        data = os.urandom(2 * 1024 * 1024)
        assert client.put("jobs/9/blob.bin", data)["sha256"] == hashlib.sha256(data).hexdigest()
        assert client.get("jobs/9/blob.bin", max_bytes=len(data)) == data
    wrong = AgentClient(
        socket.create_connection(("127.0.0.1", local), timeout=30), "a-wrong-secret-0123456789"
    )
    with pytest.raises(AgentRefused):
        wrong.hello()
    removed = google_adb("-s", endpoint.address, "forward", "--remove", f"tcp:{local}")
    assert removed.returncode == 0, removed.stderr
    google_adb("disconnect", endpoint.address)
