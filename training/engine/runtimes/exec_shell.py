"""The `exec` runtime: ADB shell runs `agent.pyz <step>` once per round step (virtual phones, rooted phones
with Termux, Linux boards with adbd). The first runtime behind the seam (base.py), and the only module of
the engine that talks ADB (through devices/adb.py, the one seam to it).

A round on one phone is one ADB connection: a single command clears the last round's dir, makes this
one's and hashes what the phone holds (agent, shard, union), so only what changed is pushed; the payload
goes down one sync stream, the agent runs with its progress streamed as JSON lines, and its outputs come
up one sync stream whose sizes are checked before anything moves.
"""

from __future__ import annotations

import posixpath
import shlex
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from devices import adb
from devices.models import Device
from devices.validators import agent_python_command
from training.agent.build import AgentBuild, build_agent_pyz
from training.agent.round_config import CANCEL_FILE
from training.engine.runtimes.agent_output import EXIT_MARKER, parse_agent_output
from training.engine.runtimes.base import (
    AgentRun,
    ClientError,
    ClientOffline,
    ClientTimeout,
    ClientTransferFailed,
    ClientUnauthorized,
    JobFiles,
    OutputMissing,
    OutputTooLarge,
    Prepared,
    ProgressCallback,
    RoundRef,
    Step,
)
from training.jobs import storage

CONNECT_TIMEOUT_S = 10.0

_agent_build_lock = threading.Lock()


def agent_build() -> AgentBuild:
    """This process's agent.pyz, built on first use. The lock matters: a round's first tasks arrive
    together on the devices worker's threads, and each would otherwise compile and write its own copy."""
    with _agent_build_lock:
        return _built_agent()


@lru_cache(maxsize=1)
def _built_agent() -> AgentBuild:
    return build_agent_pyz(storage.data_dir() / "agent")


def target_of(device: Device) -> adb.Target:
    return adb.Target(transport=device.transport, address=device.address)


@contextmanager
def client_errors() -> Iterator[None]:
    """ADB's errors in the seam's words (the engine records them as the client's reason)."""
    try:
        yield
    except adb.DeviceUnauthorized as exc:
        raise ClientUnauthorized(str(exc)) from exc
    except adb.DeviceTimeout as exc:
        raise ClientTimeout(str(exc)) from exc
    except adb.DeviceOffline as exc:
        raise ClientOffline(str(exc)) from exc
    except adb.RemoteFileMissing as exc:
        raise OutputMissing(posixpath.basename(exc.remote)) from exc
    except adb.RemoteFileTooLarge as exc:
        raise OutputTooLarge(posixpath.basename(exc.remote), exc.size, at_least=exc.cut_off) from exc
    except adb.TransferFailed as exc:
        raise ClientTransferFailed(str(exc)) from exc
    except adb.AdbError as exc:
        error = ClientError(str(exc))
        error.prefix = "adb error"
        raise error from exc


def remote_sha256(
    conn: adb.AdbConnection, paths: list[str], *, make_dirs: list[str], remove_first: str | None = None
) -> dict[str, str]:
    """Remove `remove_first` (last round's dir tree), create `make_dirs` and hash `paths` on the phone in
    one command: one round trip where there were four (a round's cleanup used to be its own command at
    the end of the round, on the way to reporting).

    Missing files simply have no line; the output is untrusted text, so only well-formed
    `<64 hex>  <one of our paths>` lines count."""
    quoted_dirs = " ".join(shlex.quote(d) for d in make_dirs)
    quoted_paths = " ".join(shlex.quote(p) for p in paths)
    remove = f"rm -rf {shlex.quote(remove_first)}; " if remove_first else ""
    output = conn.shell(
        f"{remove}mkdir -p {quoted_dirs} && sha256sum {quoted_paths} 2>/dev/null", timeout_s=30
    )
    hashes = {}
    for line in output.splitlines():
        digest, _, path = line.strip().partition("  ")
        if path in paths and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            hashes[path] = digest
    return hashes


def push_if_changed(
    conn: adb.AdbConnection, local: Path, remote: str, sha256: str, current: dict[str, str]
) -> int:
    """Push `local` unless the phone already holds exactly this content; return the bytes pushed."""
    return 0 if current.get(remote) == sha256 else conn.push(local, remote)


class ExecSession:
    """One phone's round over one ADB connection."""

    def __init__(self, conn: adb.AdbConnection, device: Device, ref: RoundRef) -> None:
        self.conn = conn
        self.device = device
        work_dir = device.work_dir
        self.remote_round = storage.phone_round_dir(work_dir, ref.job_id, ref.round_number, ref.attempt)
        self.remote_agent = storage.phone_agent_path(work_dir)
        self.remote_shard = storage.phone_shard_path(work_dir, ref.job_id)
        self.remote_union = storage.phone_union_path(work_dir, ref.job_id)
        self.remote_state = storage.phone_state_dir(work_dir, ref.job_id)
        self.remote_rounds = storage.phone_rounds_dir(work_dir, ref.job_id)

    def prepare(self, job_files: JobFiles, *, send_union: bool) -> Prepared:
        with client_errors():
            current = remote_sha256(
                self.conn,
                [
                    self.remote_agent,
                    *([self.remote_shard] if job_files.shard is not None else []),
                    *([self.remote_union] if job_files.union else []),
                ],
                make_dirs=[self.remote_round, self.remote_state],
                # Earlier rounds' dirs of this job (the phone is leased to one job, one round at a time).
                remove_first=self.remote_rounds,
            )
            build = agent_build()
            pushed = push_if_changed(self.conn, build.path, self.remote_agent, build.sha256, current)
            if job_files.shard is not None:  # None: the phone trains on its own files
                pushed += push_if_changed(
                    self.conn, job_files.shard, self.remote_shard, job_files.shard_sha256, current
                )
            union = 0
            if send_union and job_files.union is not None and job_files.union_sha256 is not None:
                union = push_if_changed(
                    self.conn, job_files.union, self.remote_union, job_files.union_sha256, current
                )
        return Prepared(job_bytes=pushed, union_bytes=union)

    def deliver(self, local_dir: Path, names: Sequence[str]) -> int:
        with client_errors():
            if len(names) == 1:
                return self.conn.push(local_dir / names[0], f"{self.remote_round}/{names[0]}")
            return self.conn.push_files([(local_dir / name, f"{self.remote_round}/{name}") for name in names])

    def run(self, step: Step, on_progress: ProgressCallback | None, *, timeout_s: float) -> AgentRun:
        command = (
            f"{agent_python_command(self.device.agent_python)} {shlex.quote(self.remote_agent)} {step} "
            f"{shlex.quote(self.remote_round)}; echo {EXIT_MARKER}$?"
        )
        with client_errors():
            return parse_agent_output(self.conn.stream_lines(command, timeout_s=timeout_s), on_progress)

    def collect(self, files: Sequence[tuple[str, Path]], *, max_bytes: int) -> int:
        """One sync stream: every size is checked before any file is fetched."""
        with client_errors():
            return self.conn.pull_files(
                [(f"{self.remote_round}/{name}", local) for name, local in files], max_bytes=max_bytes
            )


class ExecRuntime:
    name = "exec"

    @contextmanager
    def session(self, device: Device, ref: RoundRef) -> Iterator[ExecSession]:
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            yield ExecSession(conn, device, ref)

    def cancel(self, device: Device, ref: RoundRef) -> None:
        """Drop the cancel flag into the run's round dir: the agent checks it after every step and stops
        (within a step's time), writing no update. A run already over finds no dir: nothing to stop."""
        remote_round = storage.phone_round_dir(device.work_dir, ref.job_id, ref.round_number, ref.attempt)
        flag = f"{remote_round}/{CANCEL_FILE}"
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            conn.shell(f"touch {shlex.quote(flag)} 2>/dev/null", timeout_s=10)

    def clean_up(self, device: Device, job_id: int) -> None:
        job_dir = storage.phone_job_dir(device.work_dir, job_id)
        with client_errors(), adb.connect(target_of(device), timeout_s=CONNECT_TIMEOUT_S) as conn:
            conn.run(f"rm -rf {shlex.quote(job_dir)}", timeout_s=60)
