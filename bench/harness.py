"""A throwaway FedFleet lab for benchmarks: real Redis, real Celery workers, a virtual lab, a fresh
SQLite database and data dir — the same processes `make demo` runs, torn down at the end.

    with BenchLab(phones=20, profiles=None) as lab:
        job = lab.run_job({...config...})          # blocks until the job ends
        rows = lab.round_rows(job)

The benchmark process itself uses Django against the same database to register phones, launch jobs and
read the results, so figures come from the rows the platform recorded, not from a side channel.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from config.local_redis import start_local_redis  # noqa: E402
from config.ports import free_port_range  # noqa: E402


class BenchLab:
    def __init__(
        self,
        phones: int,
        *,
        profiles: Path | None = None,
        seed: int = 1,
        devices_concurrency: int | None = None,
        training_concurrency: int = 2,
        lab_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        register_order: list[int] | None = None,
        killable: bool = False,
        control: bool = False,
    ) -> None:
        self.phones = phones
        self.profiles = profiles
        self.seed = seed
        self.devices_concurrency = devices_concurrency or max(8, phones + 4)
        self.training_concurrency = training_concurrency
        self.lab_args = lab_args or []
        # e.g. {"FEDFLEET_PROBE_INTERVAL_S": "1"}: settings for every process of the lab
        self.extra_env = extra_env or {}
        # Lab phone indices in the order they are registered. The engine numbers a job's clients in
        # registration (pk) order, so this decides which client -- and data shard -- each phone gets.
        self.register_order = register_order
        # killable: every process in its own session, so kill() takes a process with its children (a
        # prefork worker's pool) as a crashed host would, and restart() starts it again.
        self.killable = killable
        self.work = Path(tempfile.mkdtemp(prefix="fedfleet-bench-"))
        # control: the lab opens its control channel here (devices/virtual/control.py)
        self.control_socket = self.work / "lab.sock" if control else None
        self.processes: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}  # the live process of each name
        self._argv: dict[str, list[str]] = {}
        self.resumes: dict[int, int] = {}  # job id -> times run_job resumed it (auto_resume)
        self.phone_lines: list[str] = []

    # -------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> BenchLab:
        self.redis = start_local_redis(self.work / "redis")
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="config.settings",
            # Measure what a deployment runs: DEBUG off (DEBUG keeps every SQL query in memory and wraps
            # each cursor call), with a throwaway secret key.
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            FEDFLEET_DATA_DIR=str(self.work / "data"),
            DATABASE_URL=f"sqlite:///{self.work / 'db.sqlite3'}",
            REDIS_URL=self.redis.url,
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        os.environ.update({k: self.env[k] for k in ("DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG", "DJANGO_SECRET_KEY", "FEDFLEET_DATA_DIR",
                                                     "DATABASE_URL", "REDIS_URL")})  # fmt: skip
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=self.env, check=True)
        import django  # noqa: PLC0415

        django.setup()
        self._start_lab()
        self._start("worker-devices", [str(BIN / "celery"), "-A", "config", "worker", "-Q", "devices", "-P",
                                       "threads", "-c", str(self.devices_concurrency), "-n", "dev@%h",
                                       "--without-gossip", "--without-mingle", "-l", "WARNING"])  # fmt: skip
        self._start("worker-training", [str(BIN / "celery"), "-A", "config", "worker", "-Q", "training",
                                        "-P", "prefork", "-c", str(self.training_concurrency), "-n",
                                        "train@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"])  # fmt: skip
        self._start("beat", [str(BIN / "celery"), "-A", "config", "beat", "-l", "WARNING", "-s",
                             str(self.work / "beat-schedule")])  # fmt: skip
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.stop()

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # appended: a restarted process keeps the log of the one before it
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.killable,
        )
        self.processes.append(process)
        self.named[name] = process
        self._argv[name] = argv
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 30) -> None:
        """Signal a process (with its whole group when killable) and wait until it is gone."""
        process = self.named[name]
        if process.poll() is None:
            if self.killable:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
            process.wait(timeout=timeout_s)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start a process again with the command line it was first started with."""
        if self.named[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        return self._start(name, self._argv[name])

    def start_web(self, port: int) -> None:
        """Daphne on 127.0.0.1:port, as `make demo` runs it; web_answers() says when it serves."""
        self.web_port = port
        self._start(
            "web", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
        )

    def web_answers(self, path: str = "/accounts/login/") -> bool:
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as reply:  # noqa: S310 - loopback
                return bool(reply.status == 200)
        except OSError:
            return False

    def crash_redis(self) -> None:
        """SIGKILL Redis: no shutdown save; what survives is what its append-only file held."""
        self.redis.process.kill()
        self.redis.process.wait(timeout=10)

    def restart_redis(self) -> None:
        """Redis again on the same port and data dir (config/local_redis.py), as a supervisor would."""
        self.redis = start_local_redis(self.redis.data_dir, self.redis.port)

    def _start_lab(self) -> None:
        from devices.adb_identity import platform_identity  # noqa: PLC0415

        keys = self.work / "adb_keys"
        keys.write_text(platform_identity().public_key + "\n")
        base_port = free_port_range(self.phones)
        argv = [sys.executable, "-m", "devices.virtual", "--phones", str(self.phones), "--base-port",
                str(base_port), "--keys", str(keys), "--seed", str(self.seed), "--lab-dir",
                str(self.work / "lab"), "--warm-zygote", *self.lab_args]  # fmt: skip
        if self.control_socket is not None:
            argv += ["--control-socket", str(self.control_socket)]
        if self.profiles:
            argv += ["--profiles", str(self.profiles)]
        process = self._start("lab", argv)
        self.lab_process = process
        log = self.work / "lab.log"
        deadline = time.monotonic() + 120
        while "READY" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"virtual lab did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        self.phone_lines = [
            line for line in log.read_text().splitlines() if len(line.split()) >= 3 and ":" in line.split()[1]
        ]

    def register(self) -> None:
        from devices import tasks as device_tasks  # noqa: PLC0415
        from devices.services import register_or_update_device  # noqa: PLC0415

        order = self.register_order if self.register_order is not None else range(len(self.phone_lines))
        for index in order:
            serial, address = self.phone_lines[index].split()[:2]
            device = register_or_update_device(
                name=serial, transport="tcp", address=address, tags=["virtual"]
            )
            device_tasks.probe_device(device.pk)

    def start_scenario(self, timeout_s: float = 30) -> None:
        """End the lab's --hold-online: the availability scenario starts now (lab time 0)."""
        self.lab_process.send_signal(signal.SIGUSR1)
        log = self.work / "lab.log"
        deadline = time.monotonic() + timeout_s
        while "SCENARIO STARTED" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("the lab did not confirm the scenario start")
            time.sleep(0.05)

    def next_turn(self, timeout_s: float = 30) -> None:
        """Move the lab's scenario clock one period forward (the next alternating group's turn, now)."""
        log = self.work / "lab.log"
        before = log.read_text(errors="replace").count("SCENARIO ADVANCED")
        self.lab_process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while log.read_text(errors="replace").count("SCENARIO ADVANCED") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("the lab did not confirm the next turn")
            time.sleep(0.02)

    # ---------------------------------------------------------------------------------------- jobs
    def run_job(
        self,
        config: dict[str, Any],
        *,
        timeout_s: float = 3600,
        on_prepared: Callable[[Any], None] | None = None,
        auto_resume: int = 0,
        on_poll: Callable[[Any], None] | None = None,
        poll_s: float = 0.5,
    ) -> Any:
        """Launch a job and block until it ends; `on_prepared(job)` runs once its phones are chosen.

        The engine pauses a job whose round is abandoned five times in a row (a broken lab must not retry
        forever). Where that is expected -- phones coming and going by design -- `auto_resume` resumes it up
        to that many times, as an operator would; `self.resumes[job.pk]` counts how often it did.
        `on_poll(job)` runs every `poll_s` seconds with the fresh row (e.g. to turn the scenario by rounds)."""
        from django.contrib.auth import get_user_model  # noqa: PLC0415

        from training.jobs.config import parse_job_config  # noqa: PLC0415
        from training.jobs.services import create_job, resume_job  # noqa: PLC0415
        from training.models import Job  # noqa: PLC0415

        owner, _ = get_user_model().objects.get_or_create(username="bench")
        job = create_job(owner, parse_job_config(config))
        deadline = time.monotonic() + timeout_s
        prepared = on_prepared is None
        while True:
            job = Job.objects.get(pk=job.pk)
            if not prepared and job.participants.exists():
                prepared = True
                assert on_prepared is not None
                on_prepared(job)
            if on_poll is not None and prepared:
                on_poll(job)
            if job.status == "paused" and self.resumes.get(job.pk, 0) < auto_resume:
                self.resumes[job.pk] = self.resumes.get(job.pk, 0) + 1
                resume_job(job, owner)
                continue
            if job.status in ("completed", "failed", "cancelled", "paused"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.pk} still {job.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, sort_keys=True), flush=True)
