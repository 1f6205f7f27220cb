"""The resident and app runtimes through the client-runtime seam, against virtual phones over the real
ADB protocol with real `agent.pyz serve` processes: the platform starting and restarting a resident agent,
an app agent upgraded over the stream, a round's files both ways with their limits, cancel within a
second, a killed agent, a wrong secret — each with the reason the fleet page shows."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.ports import free_port_range
from devices import adb, services
from devices.adb_identity import platform_identity
from devices.models import Device, DeviceStatus
from devices.probing import probe
from devices.services import termux_command
from devices.virtual.lab import LabConfig, LabThread
from devices.virtual.profile import PhoneProfile, TermuxProfile, stock_android
from tests.agent.serving import tiny_job
from tests.conftest import wait_until
from training.agent.build import pyz_bytes
from training.engine.runtimes import runtime_for
from training.engine.runtimes.agent_stream import AgentDied, AgentRefusedSecret, open_agent
from training.engine.runtimes.app import probe_agent
from training.engine.runtimes.base import (
    AgentRun,
    ClientError,
    ClientOffline,
    JobFiles,
    OutputMissing,
    OutputTooLarge,
    RoundRef,
)
from training.engine.runtimes.exec_shell import agent_build
from training.engine.runtimes.resident import AgentFiles, recorded_pid
from training.fl import wire

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

APP_SECRET = "app-secret-typed-in-termux-0123"
PAYLOAD = ("global.safetensors", "config.json")


@pytest.fixture(scope="module")
def outdated_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The platform's agent with one extra file: a valid agent whose hash is not the platform's."""
    with zipfile.ZipFile(agent_build().path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["outdated.txt"] = b"an older build\n"
    path = tmp_path_factory.mktemp("outdated") / "agent.pyz"
    path.write_bytes(pyz_bytes(files))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, outdated_pyz: Path) -> Iterator[LabThread]:
    keys = tmp_path_factory.mktemp("keys") / "adb_keys"
    keys.write_text(platform_identity().public_key + "\n")
    profiles = (
        PhoneProfile(serial="vr-resident"),
        dataclasses.replace(
            stock_android(serial="vr-app"), termux=TermuxProfile(installed=True, agent_secret=APP_SECRET)
        ),
    )
    config = LabConfig(
        lab_dir=tmp_path_factory.mktemp("lab"),
        base_port=free_port_range(len(profiles)),
        keys_file=keys,
        profiles=profiles,
        use_zygote=True,
        warm_zygote=True,
        agent_pyz=outdated_pyz,
    )
    with LabThread(config) as running:
        yield running


def register(lab: LabThread, serial: str, runtime: str, **changes: Any) -> Device:
    endpoint = next(e for e in lab.endpoints if e.serial == serial)
    work_dir = "/sdcard/fedfleet/" if runtime == "app" else "/data/local/tmp/fedfleet/"
    device = services.create_device(
        services.DeviceSettings(
            name=f"{serial}-{runtime}",
            transport="tcp",
            address=endpoint.address,
            runtime=runtime,
            work_dir=work_dir,
            **changes,
        )
    )
    services.set_status(device.pk, DeviceStatus.ONLINE)
    return Device.objects.get(pk=device.pk)


def app_device(lab: LabThread, secret: str = APP_SECRET) -> Device:
    return register(lab, "vr-app", "app", agent_secret=secret)


def round_files(tmp: Path, job_id: int, *, epochs: int = 2) -> tuple[JobFiles, Path, dict]:
    files, round_dir, expected = tiny_job(str(job_id), epochs=epochs)
    local = tmp / "round"
    local.mkdir(parents=True, exist_ok=True)
    shard = tmp / "shard.safetensors"
    for path, data in files.items():
        if path.endswith("shard.safetensors"):
            shard.write_bytes(data)
        else:
            (local / path.rsplit("/", 1)[1]).write_bytes(data)
    job = JobFiles(shard=shard, shard_sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    return job, local, expected


def train_round(device: Device, tmp: Path, job_id: int) -> tuple[AgentRun, list[dict], dict]:
    job, local, expected = round_files(tmp, job_id)
    progress: list[dict] = []
    with runtime_for(device).session(device, RoundRef(job_id, 1, 0)) as session:
        prepared = session.prepare(job, send_union=False)
        assert prepared.job_bytes == job.shard.stat().st_size
        assert session.deliver(local, PAYLOAD) == sum((local / n).stat().st_size for n in PAYLOAD)
        run = session.run("train", progress.append, timeout_s=120)
        pulled = session.collect(
            [("update.safetensors", tmp / "update.safetensors"), ("result.json", tmp / "result.json")],
            max_bytes=1 << 22,
        )
        assert pulled == (tmp / "update.safetensors").stat().st_size + (tmp / "result.json").stat().st_size
        with pytest.raises(OutputTooLarge) as too_large:
            session.collect([("update.safetensors", tmp / "small")], max_bytes=100)
        assert too_large.value.name == "update.safetensors" and not (tmp / "small").exists()
        # Both outputs in one answer (the `result` request): the agent checks the limit before sending.
        with pytest.raises(OutputTooLarge) as too_large:
            session.collect([("update.safetensors", tmp / "u2"), ("result.json", tmp / "r2")], max_bytes=100)
        assert too_large.value.name == "update.safetensors" and not (tmp / "u2").exists()
        with pytest.raises(OutputMissing):
            session.collect([("request.safetensors", tmp / "none")], max_bytes=100)
        # A second round of the same job finds the shard there: nothing but the payload moves.
        assert session.prepare(job, send_union=False).job_bytes == 0
    update = wire.load_update((tmp / "update.safetensors").read_bytes(), expected, max_bytes=1 << 22)
    return run, progress, update


def agent_hash(device: Device) -> str | None:
    with adb.connect(adb.Target("tcp", device.address)) as conn, open_agent(conn, device) as client:
        return client.hello_info.sha256 if client.hello_info else None


# --- app mode ---------------------------------------------------------------------------------------
def test_an_outdated_app_agent_is_upgraded_over_the_stream_and_trains(lab: LabThread, tmp_path: Path) -> None:
    device = app_device(lab)
    wait_until(lambda: lab.lab.phone("vr-app").loopback_port(7000), timeout_s=120, what="the app's agent")
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        verdict = wait_until(lambda: probe_agent(conn, device), timeout_s=120, what="the app agent's hello")
    assert verdict == (DeviceStatus.ONLINE, "agent outdated, upgrading with its next round")
    assert agent_hash(device) != agent_build().sha256

    run, progress, update = train_round(device, tmp_path, 901)

    assert run.exit_code == 0 and run.done["samples"] == 45
    assert [line["step"] for line in progress] == list(range(1, 11))
    assert update and agent_hash(device) == agent_build().sha256
    assert Device.objects.get(pk=device.pk).status_reason.startswith("agent upgraded to")
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        assert probe_agent(conn, device) is None  # current now: the probe says nothing against it
    # The one-line command a person types: this phone's secret in a 0600 file, never on the agent's line.
    command = termux_command(device)
    assert f"echo {APP_SECRET} > ~/.fedfleet-agent-secret" in command and "umask 077" in command
    assert command.endswith("python agent.pyz serve --port 7000 --secret-file ~/.fedfleet-agent-secret")


def test_a_wrong_secret_is_refused_with_the_reason_on_the_phone(lab: LabThread) -> None:
    device = app_device(lab, secret="not-the-phones-secret-000")
    with pytest.raises(AgentRefusedSecret) as refused:
        with runtime_for(device).session(device, RoundRef(902, 1, 0)):
            pass
    assert refused.value.reason() == "agent refused the platform: wrong agent secret"
    device.refresh_from_db()
    assert device.status == DeviceStatus.UNAUTHORIZED and device.status_reason.startswith(
        "wrong agent secret"
    )
    # The health probe says the same (training's agent check, registered with the devices app).
    outcome = probe(adb.Target("tcp", device.address), device=device)
    assert (outcome.status, outcome.reason.split(":")[0]) == (DeviceStatus.UNAUTHORIZED, "wrong agent secret")


def test_an_app_agent_killed_mid_round_fails_the_phone_and_then_says_not_running(
    lab: LabThread, tmp_path: Path
) -> None:
    device = app_device(lab)
    failure = run_until_interrupted(
        device, tmp_path, 903, lambda: lab.call(lambda v: v.phone("vr-app").stop_app_agent())
    )
    assert isinstance(failure, AgentDied) and failure.reason().startswith("agent connection lost")
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        conn.shell("rm /sdcard/fedfleet/agent.pyz")
    with pytest.raises(ClientOffline, match="agent not running"):
        with runtime_for(device).session(device, RoundRef(903, 2, 0)):
            pass
    # ...and the platform put agent.pyz back where the person's Termux command runs it.
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        placed = conn.shell("sha256sum /sdcard/fedfleet/agent.pyz").split()[0]
    assert placed == agent_build().sha256
    outcome = probe(adb.Target("tcp", device.address), device=device)
    assert outcome.status == DeviceStatus.OFFLINE and outcome.reason.startswith("agent not running")
    lab.call(lambda v: v.phone("vr-app").start_app_agent())  # the person starts it again


# --- resident mode ------------------------------------------------------------------------------------
def resident_device(lab: LabThread) -> Device:
    return register(lab, "vr-resident", "resident")


def test_the_platform_starts_a_resident_agent_and_keeps_it(lab: LabThread, tmp_path: Path) -> None:
    device = resident_device(lab)
    files = AgentFiles(device)
    run, progress, update = train_round(device, tmp_path, 911)
    assert run.exit_code == 0 and len(progress) == 10 and update
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        pid = recorded_pid(conn, files)
        secret = conn.stat(files.secret)
        assert secret is not None and secret.mode & 0o777 == 0o600
        assert conn.shell(f"cat {files.secret}").strip() == device.agent_secret
    assert pid is not None and lab.lab.phone("vr-resident").job_alive(pid)
    # The next round finds it running: the same process serves it.
    train_round(device, tmp_path / "again", 912)
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        assert recorded_pid(conn, files) == pid


def run_until_interrupted(device: Device, tmp: Path, job_id: int, interrupt: Any) -> BaseException | AgentRun:
    """Start a long train in a thread, call `interrupt` once it streams progress; what run() ended with."""
    job, local, _ = round_files(tmp, job_id, epochs=20000)
    progress: list[dict] = []
    outcome: list[BaseException | AgentRun] = []

    def work() -> None:
        try:
            with runtime_for(device).session(device, RoundRef(job_id, 1, 0)) as session:
                session.prepare(job, send_union=False)
                session.deliver(local, PAYLOAD)
                outcome.append(session.run("train", progress.append, timeout_s=120))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    wait_until(lambda: len(progress) >= 2 or outcome, timeout_s=120, what="the train's progress")
    assert not outcome, f"the run ended before it was interrupted: {outcome[0]!r}"
    interrupted_at = time.monotonic()
    interrupt()
    thread.join(timeout=30)
    assert outcome, "the run did not end"
    run_until_interrupted.took_s = time.monotonic() - interrupted_at  # type: ignore[attr-defined]
    return outcome[0]


def test_cancel_stops_a_resident_train_within_a_second(lab: LabThread, tmp_path: Path) -> None:
    device = resident_device(lab)
    cancelled_at: list[float] = []

    def cancel() -> None:
        runtime_for(device).cancel(device, RoundRef(913, 1, 0))
        cancelled_at.append(time.monotonic())

    outcome = run_until_interrupted(device, tmp_path, 913, cancel)
    assert isinstance(outcome, AgentRun) and outcome.exit_code == 1 and outcome.error.startswith("cancelled")
    assert run_until_interrupted.took_s < 1.0, f"the train went on {run_until_interrupted.took_s:.2f} s"  # type: ignore[attr-defined]
    # Cancelling when nothing runs is harmless.
    runtime_for(device).cancel(device, RoundRef(913, 1, 0))


def test_a_killed_resident_agent_fails_its_round_and_is_back_for_the_next(
    lab: LabThread, tmp_path: Path
) -> None:
    device = resident_device(lab)
    files = AgentFiles(device)
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        train_round(device, tmp_path / "warm", 920)  # make sure one runs
        pid = recorded_pid(conn, files)
    assert pid is not None

    def kill() -> None:
        with adb.connect(adb.Target("tcp", device.address)) as conn:
            assert conn.shell(f"kill -9 {pid}; echo $?").strip() == "0"

    failure = run_until_interrupted(device, tmp_path, 921, kill)
    assert isinstance(failure, AgentDied), failure
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE  # ADB answered: not offline
    run, _, _ = train_round(device, tmp_path / "next", 922)
    assert run.exit_code == 0
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        restarted = recorded_pid(conn, files)
    assert restarted is not None and restarted != pid


def test_a_resident_agent_with_another_secret_is_restarted_with_the_phones(
    lab: LabThread, tmp_path: Path
) -> None:
    device = resident_device(lab)
    train_round(device, tmp_path / "first", 930)
    device = services.update_device(
        device.pk,
        services.DeviceSettings(
            name=device.name,
            transport="tcp",
            address=device.address,
            runtime="resident",
            work_dir=device.work_dir,
            agent_secret="a-new-secret-for-this-phone",
        ),
    )
    run, _, _ = train_round(device, tmp_path / "second", 931)
    assert run.exit_code == 0
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        assert conn.shell(f"cat {AgentFiles(device).secret}").strip() == "a-new-secret-for-this-phone"


def test_test_connection_detects_the_runtime(lab: LabThread) -> None:
    """A stock phone (no python in its shell, com.termux installed) is app mode; a shell with python, exec."""
    by_serial = {e.serial: e for e in lab.endpoints}
    stock = probe(adb.Target("tcp", by_serial["vr-app"].address), detect=True)
    shell = probe(adb.Target("tcp", by_serial["vr-resident"].address), detect=True)
    assert (stock.status, stock.runtime) == (DeviceStatus.ONLINE, "app")
    assert (shell.status, shell.runtime) == (DeviceStatus.ONLINE, "exec")


def test_an_outdated_resident_agent_that_cannot_be_upgraded_is_restarted(
    lab: LabThread, tmp_path: Path, outdated_pyz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.engine.runtimes import resident  # noqa: PLC0415

    device = resident_device(lab)
    files = AgentFiles(device)
    with adb.connect(adb.Target("tcp", device.address)) as conn:  # last month's build, running
        old = resident.recorded_pid(conn, files)
        conn.push(outdated_pyz, files.agent)
        resident.push_secret(conn, device.agent_secret, files.secret)
        conn.shell(resident.start_command(device, files, old))
        outdated = wait_until(lambda: agent_hash_or_none(device), timeout_s=120, what="the outdated agent")
        first_pid = resident.recorded_pid(conn, files)
    assert outdated != agent_build().sha256
    # The fault: this agent's upgrade over the stream fails (once).
    real, failures = resident.up_to_date, []

    def failing_once(conn: adb.AdbConnection, device: Device, client: Any) -> Any:
        if not failures:
            failures.append(1)
            raise ClientError("upgrade refused: read-only archive")
        return real(conn, device, client)

    monkeypatch.setattr(resident, "up_to_date", failing_once)
    run, _, _ = train_round(device, tmp_path, 940)
    assert run.exit_code == 0 and failures == [1]
    assert agent_hash(device) == agent_build().sha256
    with adb.connect(adb.Target("tcp", device.address)) as conn:
        assert resident.recorded_pid(conn, files) not in (None, first_pid)


def agent_hash_or_none(device: Device) -> str | None:
    try:
        return agent_hash(device)
    except (adb.StreamRefused, ClientError):
        return None
