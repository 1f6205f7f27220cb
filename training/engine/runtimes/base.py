"""The client-runtime seam: how one client's part of a round runs, whatever the client is.

The engine (training/engine/client.py) drives every phone's round through this interface and knows
nothing of ADB: it asks a runtime for a session on one phone for one round, then

    prepare(job_files)        make sure the client holds the agent and the job's files (shard, union)
    deliver(local, names)     hand over this round's payload (model or submodel, config.json)
    run(step, on_progress)    run a step ("train", or "request" for submodel jobs), streaming progress
    collect(files, max_bytes) fetch what the step wrote (update + result.json, or the index request)

and outside a round: `cancel` stops a client's run in progress, `clean_up` removes a finished job's
files from it. Runtimes raise only the ClientError family below, whose messages the engine records as
the client's reason — so a new runtime (a resident agent over a `tcp:` stream, simulated in-process
clients) needs no change to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from devices.models import Device

Step = Literal["train", "request"]
ProgressCallback = Callable[[dict[str, Any]], None]


# --- errors: what went wrong, in the words the client's record will carry --------------------------------
class ClientError(Exception):
    """A client's part of a round failed; str(exc) is the detail, `prefix` says what kind of failure."""

    prefix = "client error"

    def reason(self) -> str:
        return f"{self.prefix}: {self}"


class ClientUnauthorized(ClientError):
    prefix = "phone rejected the platform key"


class ClientTimeout(ClientError):
    prefix = "phone stopped answering"


class ClientOffline(ClientError):
    """Nothing answers on the client: it is marked offline until a health probe reaches it again."""

    prefix = "phone went offline"


class ClientTransferFailed(ClientError):
    prefix = "transfer failed"


class OutputMissing(ClientError):
    """The step finished but did not write `name`."""

    prefix = "output missing"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class OutputTooLarge(ClientError):
    """`name` is larger than the caller's limit; nothing of it was kept. `at_least`: the transfer was cut
    off at the limit, so `size` is only a lower bound."""

    prefix = "output too large"

    def __init__(self, name: str, size: int, *, at_least: bool = False) -> None:
        self.name = name
        self.size = size
        self.at_least = at_least
        super().__init__(f"{name} is {self.size_text()}")

    def size_text(self) -> str:
        return f"{'at least ' if self.at_least else ''}{self.size} bytes"


# --- what crosses the seam ----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFiles:
    """What a client keeps for the whole job: its data shard and, for submodel jobs, the union of ids.
    `shard` None: no shard — a phone-resident job's client trains on its own files, and nothing of the
    data is sent (runtimes skip it)."""

    shard: Path | None
    shard_sha256: str
    union: Path | None = None
    union_sha256: str | None = None


@dataclass(frozen=True)
class Prepared:
    """What prepare() moved: agent and shard (`job_bytes`) apart from the union (`union_bytes`), which
    counts as the round's model traffic."""

    job_bytes: int
    union_bytes: int


@dataclass
class AgentRun:
    """How a step ended: its exit status, the agent's own error message, the last lines it printed, and
    its final `done` message."""

    exit_code: int | None = None
    error: str = ""
    tail: list[str] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)

    def failure(self) -> str:
        """The reason a failed step gives: the agent's error, else its last words."""
        return self.error or (self.tail[-1] if self.tail else "no output")


class ClientSession(Protocol):
    """One client, one round attempt (a context manager: the connection lives as long as the round's
    work on that client)."""

    def prepare(self, job_files: JobFiles, *, send_union: bool) -> Prepared: ...

    def deliver(self, local_dir: Path, names: Sequence[str]) -> int: ...

    def run(self, step: Step, on_progress: ProgressCallback | None, *, timeout_s: float) -> AgentRun: ...

    def collect(self, files: Sequence[tuple[str, Path]], *, max_bytes: int) -> int: ...


@dataclass(frozen=True)
class RoundRef:
    """Which round attempt a session serves (the runtime derives the client's own paths from it)."""

    job_id: int
    round_number: int
    attempt: int


class ClientRuntime(Protocol):
    """How one kind of client runs its part of a round."""

    name: str

    def session(self, device: Device, ref: RoundRef) -> AbstractContextManager[ClientSession]: ...

    def cancel(self, device: Device, ref: RoundRef) -> None: ...

    def clean_up(self, device: Device, job_id: int) -> None: ...
