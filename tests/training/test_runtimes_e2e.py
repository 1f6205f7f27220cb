"""Every runtime trains a 3-round job end to end through the real parts: Celery workers, Redis, virtual
phones over the real ADB protocol — exec phones running the agent per round, resident phones whose
`agent serve` the platform starts over the shell, and stock phones whose app agent (an outdated build,
upgraded over the stream by the first round) the platform reaches over `tcp:` only. A slow app phone is
cancelled each round while the round goes on without it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable

import pytest

from devices import adb
from devices import tasks as device_tasks
from devices.models import AvailabilityInterval, Device, DeviceStatus
from devices.services import register_or_update_device
from tests.conftest import ManagedProcess, VirtualLab, make_user, wait_until
from tests.training.test_engine_integration import committed_numbers, launch, wait_for_job
from training.agent.build import pyz_bytes
from training.engine.runtimes.agent_stream import open_agent
from training.engine.runtimes.exec_shell import agent_build
from training.jobs.config import parse_job_config
from training.jobs.services import create_job
from training.models import ClientState, Job, JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Four phones whose shell runs python (two exec, two resident) and three stock phones with Termux, the
# last of them far slower than the rest.
PROFILES = [
    {"model": "Pixel 7"},
    {"model": "Pixel 7"},
    {"model": "Pixel 7"},
    {"model": "Pixel 7"},
    {"model": "SM-A525F", "stock": True, "termux": {"installed": True}},
    {"model": "SM-A525F", "stock": True, "termux": {"installed": True}},
    {"model": "moto g(30)", "stock": True, "termux": {"installed": True}, "speed_factor": 400.0},
]
RUNTIME_OF = ["exec", "exec", "resident", "resident", "app", "app", "app"]


@pytest.fixture(scope="module")
def mixed_lab(
    virtual_phones: Callable[..., VirtualLab], tmp_path_factory: pytest.TempPathFactory
) -> VirtualLab:
    work = tmp_path_factory.mktemp("mixed")
    profiles = work / "profiles.json"
    profiles.write_text(json.dumps({"phones": PROFILES}))
    with zipfile.ZipFile(agent_build().path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["outdated.txt"] = b"the build the person copied to the phone last month\n"
    outdated = work / "agent.pyz"
    outdated.write_bytes(pyz_bytes(files))
    return virtual_phones(
        len(PROFILES),
        seed=31,
        extra=["--profiles", str(profiles), "--agent-pyz", str(outdated), "--warm-zygote"],
    )


def register_mixed(lab: VirtualLab) -> list[Device]:
    assert lab.lab_dir is not None
    secrets = json.loads((lab.lab_dir / "agent_secrets.json").read_text())
    devices = []
    for index, (phone, runtime) in enumerate(zip(lab.phones, RUNTIME_OF, strict=True)):
        app = runtime == "app"
        device = register_or_update_device(
            name=f"mixed-{runtime}-{index}",
            transport="tcp",
            address=phone.address,
            tags=["virtual", f"rt-{runtime}"],
            work_dir="/sdcard/fedfleet/" if app else "/data/local/tmp/fedfleet/",
            runtime=runtime,
            agent_port=secrets[phone.serial]["port"] if app else 7000,
            agent_secret=secrets[phone.serial]["secret"] if app else "",
        )
        devices.append(device)
    return devices


def probe_until_online(device: Device) -> None:
    """An app phone's agent imports torch when the lab starts: until it listens, the probe says so."""

    def online() -> bool:
        device_tasks.probe_device(device.pk)
        device.refresh_from_db()
        return device.status == DeviceStatus.ONLINE

    wait_until(online, timeout_s=120, interval_s=0.5, what=f"{device.name} to be online")


@pytest.mark.parametrize("runtime", ["exec", "resident", "app"])
def test_each_runtime_trains_a_three_round_job(
    runtime: str, celery_worker: dict[str, ManagedProcess], mixed_lab: VirtualLab
) -> None:
    devices = [d for d in register_mixed(mixed_lab) if d.runtime == runtime]
    for device in devices:
        probe_until_online(device)
        if runtime == "app":  # the lab's app agents run last month's build
            assert "agent outdated" in Device.objects.get(pk=device.pk).status_reason
    job = wait_for_job(
        launch(f"rt-{runtime}", clients_per_round=2, min_clients=2, round_deadline_s=90),
        (JobStatus.COMPLETED, JobStatus.FAILED),
    )

    assert job.status == JobStatus.COMPLETED, job.error
    assert committed_numbers(job) == [1, 2, 3]
    assert job.last_accuracy is not None and job.last_accuracy > 0.5
    for rnd in job.rounds.all():
        reported = list(rnd.client_results.filter(state=ClientState.REPORTED))
        assert len(reported) == rnd.goal == 2
        for result in reported:
            snapshot = result.snapshot()
            assert snapshot["runtime"] == runtime
            # The round's time breakdown is there in every runtime.
            timings = snapshot["timings"]
            assert timings["push"] > 0 and timings["train"] > 0 and timings["pull"] > 0
            assert result.bytes_down > 0 and result.bytes_up > 0
        assert rnd.train_s > 0 and rnd.wall_s > 0
    if runtime == "app":
        slow = next(d for d in devices if d.name.endswith("-6"))
        slow_results = job.client_results.filter(device=slow)
        # Selected (three phones for a goal of two) and never waited for: cancelled when its round closed.
        # Not necessarily every round: a next round that starts before the cancelled run has ended skips
        # the phone (one run per phone), which on a loaded machine happens.
        assert slow_results.exists()
        assert set(slow_results.values_list("state", flat=True)) <= {ClientState.LATE, ClientState.FAILED}
        # Cancelled on its phone when the round closed: released within moments, not when its 400x-slowed
        # training would have ended (tens of seconds).
        last = slow_results.order_by("-round__number").first()
        assert last is not None and last.round.closed_at is not None
        released = (
            AvailabilityInterval.objects.filter(
                device=slow, status=DeviceStatus.ONLINE, started_at__gte=last.round.closed_at
            )
            .order_by("started_at")
            .first()
        )
        assert released is not None, "the slow phone was never released"
        held_s = (released.started_at - last.round.closed_at).total_seconds()
        print(f"slow phone released {held_s:.2f} s after its round closed")
        assert held_s < 2.0, f"the slow phone was held {held_s:.2f} s after its round closed"
        for device in devices:  # every app agent runs the platform's build now, and none is still busy
            with adb.connect(adb.Target("tcp", device.address)) as conn, open_agent(conn, device) as client:
                assert client.hello_info is not None and client.hello_info.sha256 == agent_build().sha256
                assert client.hello_info.busy is False


def test_the_resident_agent_stays_up_between_jobs(
    celery_worker: dict[str, ManagedProcess], mixed_lab: VirtualLab
) -> None:
    """A resident phone's agent is the same process for a second job (no interpreter start per round)."""
    devices = [d for d in register_mixed(mixed_lab) if d.runtime == "resident"]
    for device in devices:
        probe_until_online(device)

    def pids() -> list[str]:
        found = []
        for device in devices:
            with adb.connect(adb.Target("tcp", device.address)) as conn:
                found.append(conn.shell("cat /data/local/tmp/fedfleet/agent.pid 2>/dev/null").strip())
        return found

    owner = make_user("owner-resident-twice", None)

    def one_round_job(name: str) -> Job:
        config = {"name": name, "rounds": 1, "clients_per_round": 2, "device_tags": ["rt-resident"]}
        return wait_for_job(
            create_job(owner, parse_job_config(config)), (JobStatus.COMPLETED, JobStatus.FAILED)
        )

    first = one_round_job("resident-first")
    assert first.status == JobStatus.COMPLETED, first.error
    before = pids()
    second = one_round_job("resident-second")
    assert second.status == JobStatus.COMPLETED, second.error
    assert all(pid.isdigit() for pid in before) and pids() == before


def test_a_resident_agent_killed_mid_round_fails_that_phone_and_is_back_next_round(
    celery_worker: dict[str, ManagedProcess], mixed_lab: VirtualLab
) -> None:
    devices = [d for d in register_mixed(mixed_lab) if d.runtime == "resident"]
    for device in devices:
        probe_until_online(device)
    job = launch(
        "rt-resident", rounds=3, clients_per_round=2, min_clients=1, local_epochs=60, round_deadline_s=120
    )
    victim: list[Device] = []

    def training_with_progress() -> bool:
        for result in job.client_results.filter(round__number=1, state=ClientState.TRAINING, step__gt=0):
            victim.append(result.device)
            return True
        return False

    wait_until(training_with_progress, timeout_s=120, interval_s=0.05, what="a resident phone training")
    with adb.connect(adb.Target("tcp", victim[0].address)) as conn:
        pid = conn.shell("cat /data/local/tmp/fedfleet/agent.pid").strip()
        assert pid.isdigit() and conn.shell(f"kill -9 {pid}; echo $?").strip() == "0"
    job = wait_for_job(job, (JobStatus.COMPLETED, JobStatus.FAILED))

    assert job.status == JobStatus.COMPLETED, job.error
    first = job.client_results.get(round__number=1, device=victim[0])
    assert first.state == ClientState.FAILED and first.reason.startswith("agent connection lost"), (
        first.reason
    )
    # The phone stayed in the lab (ADB answered all along) and its next round started a new agent.
    later = job.client_results.filter(round__number__gt=1, device=victim[0], state=ClientState.REPORTED)
    assert later.exists()
    with adb.connect(adb.Target("tcp", victim[0].address)) as conn:
        assert conn.shell("cat /data/local/tmp/fedfleet/agent.pid").strip() not in ("", pid)
