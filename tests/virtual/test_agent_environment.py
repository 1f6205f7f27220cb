"""A virtual phone's agent runs with a scrubbed environment: the lab's own secrets (as docker-compose
gives the virtual-lab service) never reach a program a phone runs, over the zygote's fork or the plain
subprocess, whether it reads os.environ or its process's start-up environment (/proc/self/environ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.adb_identity import AdbIdentity
from devices.virtual.profile import PhoneProfile
from devices.virtual.runner import HOST_PASSTHROUGH, agent_environment, host_environment
from devices.virtual.zygote import ZygoteRunner
from tests.virtual.conftest import connect

SECRETS = {
    "DJANGO_SECRET_KEY": "django-secret-0b7c1e",
    "DATABASE_URL": "postgres://fedfleet:db-password-9f3a@postgres:5432/fedfleet",
    "REDIS_URL": "redis://:redis-password-5d21@redis:6379/0",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-77e0",
}
PHONE_SETTINGS = {"FEDFLEET_SLOWDOWN", "FEDFLEET_BEHAVIOUR", "FEDFLEET_PHONE_SERIAL", "FEDFLEET_LOOPBACK_DIR"}
ALLOWED = {*HOST_PASSTHROUGH, *PHONE_SETTINGS, "HOME", "TMPDIR", "PYTHONUNBUFFERED"} | {
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS",
}  # fmt: skip
# What the program sees, both ways: its os.environ and the environment block the kernel gave it.
REPORT = """
import json, os
with open("/proc/self/environ", "rb") as block:
    start_up = dict(item.split("=", 1) for item in block.read().decode().split("\\0") if "=" in item)
print(json.dumps({"environ": dict(os.environ), "proc": start_up}))
"""
PROFILE = PhoneProfile(serial="vt-env", speed_factor=1.5, behaviour="noise")


def leaked(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


@pytest.mark.parametrize("runner", ["zygote", "subprocess"])
def test_the_agent_sees_no_host_secret(
    runner: str,
    start_lab,  # noqa: ANN001
    keys_file: Path,
    identity: AdbIdentity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)  # the lab process's own environment, as in docker-compose
    lab = start_lab([PROFILE], keys_file=keys_file, use_zygote=runner == "zygote")
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    with connect(lab.endpoints[0], identity) as phone:
        phone.push(script, "/data/local/tmp/report.py")
        # A program file: the zygote forks it (when the lab has one); -c always takes the plain path.
        report = json.loads(phone.run("python3 /data/local/tmp/report.py", timeout_s=180))
        printed = phone.run("python3 -c 'import os; print(os.environ)'", timeout_s=180)
    if runner == "zygote":
        runner_ = lab.lab.runner
        assert isinstance(runner_, ZygoteRunner) and runner_.forked == 1
    assert "FEDFLEET_PHONE_SERIAL" in printed and leaked(printed) == []
    for seen in (report["environ"], report["proc"]):
        assert leaked(json.dumps(seen)) == []
        assert set(seen) <= ALLOWED, set(seen) - ALLOWED
    environ = report["environ"]
    sandbox = lab.endpoints[0].sandbox
    assert environ["FEDFLEET_SLOWDOWN"] == "1.5" and environ["FEDFLEET_BEHAVIOUR"] == "noise"
    assert environ["FEDFLEET_PHONE_SERIAL"] == "vt-env" and environ["OMP_NUM_THREADS"] == "1"
    assert environ["HOME"] == str(sandbox) and environ["TMPDIR"] == str(sandbox / "data/local/tmp")
    assert environ["FEDFLEET_LOOPBACK_DIR"] == str(sandbox / ".loopback")  # the phone's own loopback
    assert environ["PATH"]


def test_agent_environment_is_an_allowlist() -> None:
    host = {
        **SECRETS,
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/srv/app",
        "HOME": "/root",
    }
    env = agent_environment(host, slowdown=2.0, behaviour="honest", serial="s1", home=Path("/lab/s1"))
    assert leaked(json.dumps(env)) == []
    assert env["PATH"] == "/opt/bin:/usr/bin" and env["LANG"] == "C.UTF-8"
    assert "PYTHONPATH" not in env and env["HOME"] == "/lab/s1"
    assert env["FEDFLEET_SLOWDOWN"] == "2.0" and env["FEDFLEET_PHONE_SERIAL"] == "s1"
    # The zygote's own start-up environment: the same allowlist, with a PATH even when the host has none.
    assert host_environment({"DATABASE_URL": SECRETS["DATABASE_URL"]}) == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TORCH_NUM_THREADS": "1",
    }  # fmt: skip
