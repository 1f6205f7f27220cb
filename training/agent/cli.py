"""Command line of the agent:

    python agent.pyz train <round dir>     train one round (see runner.py)
    python agent.pyz request <round dir>   submodel jobs: write this round's index request (runner.py)
    python agent.pyz serve --port P [--secret-file F] [--work-dir D]
                                           the resident agent on the phone's loopback (serve.py; the
                                           secret may come from $FEDFLEET_AGENT_SECRET instead)
    python agent.pyz version               {"event": "version", "version": ..., "sha256": ..., ...}
    python agent.pyz selftest              a tiny in-memory round through the real code path

Every outcome is one JSON line on stdout; errors are {"event": "error", "message": ...} with exit status 1
(2 for a bad command line). Nothing is ever printed as a traceback the platform would have to parse.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import torch

from training.agent import AGENT_VERSION
from training.agent.round_config import CANCEL_FILE, AgentError
from training.agent.runner import emit, run_request, run_train

# How often a per-round agent looks for the platform's cancel flag (a cancel takes effect within this and
# one training step).
CANCEL_POLL_S = 0.2
USAGE = "usage: agent.pyz train <round dir> | request <round dir> | serve --port P | version | selftest"


def running_archive() -> Path | None:
    """The agent.pyz this code was imported from, or None when it runs from a source tree."""
    for parent in Path(__file__).parents:
        if parent.is_file() and zipfile.is_zipfile(parent):
            return parent
    return None


def default_work_dir() -> Path:
    """Relative paths in config.json are relative to the phone's work dir, which holds agent.pyz."""
    archive = running_archive()
    return archive.parent if archive is not None else Path.cwd()


def version_info() -> dict[str, object]:
    archive = running_archive()
    return {
        "version": AGENT_VERSION,
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest() if archive is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def selftest(stdout: TextIO) -> None:
    """Train a small logistic regression on generated data via client_train and the wire format."""
    from training.fl.client import ClientTask, client_train
    from training.fl.nets import initial_weights, model_spec_for
    from training.fl.wire import dumps_tensors, loads_tensors

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator)
    y = (x[:, 0] > 0).long()
    spec = model_spec_for("logreg", input_shape=(8,), num_classes=2)
    config = {"algorithm": "fedavg", "model": spec, "lr": 0.5, "epochs": 3, "batch_size": 16, "seed": 0}
    result = client_train(ClientTask(config=config, received=initial_weights(spec, seed=0), x=x, y=y))
    back = loads_tensors(dumps_tensors(result.upload()), max_bytes=1 << 20)
    if result.loss_after >= result.loss_before or set(back) != set(result.delta):
        raise AgentError(f"selftest failed: loss {result.loss_before:.4f} -> {result.loss_after:.4f}")
    emit(
        stdout,
        "selftest",
        ok=True,
        loss_before=result.loss_before,
        loss_after=result.loss_after,
        seconds=time.perf_counter() - started,
        **version_info(),
    )


def main(
    argv: Sequence[str], *, stdout: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout
    env = environ if environ is not None else os.environ
    torch.set_num_threads(1)  # phones share cores with everything else; one thread keeps runs comparable
    command = argv[0] if argv else ""
    try:
        if command == "train" and len(argv) == 2:
            round_dir = Path(argv[1])
            with cancel_flag_watch(round_dir) as cancel:
                run_train(
                    round_dir, stdout=out, environ=env, default_work_dir=default_work_dir(), cancel=cancel
                )
        elif command == "request" and len(argv) == 2:
            run_request(Path(argv[1]), stdout=out, default_work_dir=default_work_dir())
        elif command == "serve":
            from training.agent.serve import serve_main  # noqa: PLC0415 - exec mode never loads the server

            return serve_main(
                list(argv[1:]),
                stdout=out,
                environ=env,
                archive=running_archive(),
                work_dir=default_work_dir(),
            )
        elif command == "version" and len(argv) == 1:
            emit(out, "version", **version_info())
        elif command == "selftest" and len(argv) == 1:
            selftest(out)
        else:
            emit(out, "error", message=USAGE)
            return 2
    except AgentError as exc:
        emit(out, "error", message=_one_line(str(exc)))
        return 1
    except Exception as exc:  # anything unexpected still ends as one parsable line
        emit(out, "error", message=_one_line(f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


@contextmanager
def cancel_flag_watch(round_dir: Path, every_s: float = CANCEL_POLL_S) -> Iterator[threading.Event]:
    """Exec mode's cancel: the platform drops CANCEL_FILE into the round dir (it cannot reach this
    process otherwise); a watcher sets the event the training loop checks after every step."""
    cancel = threading.Event()
    done = threading.Event()

    def watch() -> None:
        flag = round_dir / CANCEL_FILE
        while not done.wait(every_s):
            if flag.exists():
                cancel.set()
                return

    watcher = threading.Thread(target=watch, name="cancel-flag", daemon=True)
    watcher.start()
    try:
        yield cancel
    finally:
        done.set()


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"
