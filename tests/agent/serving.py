"""A real `agent.pyz serve` process for tests, and the round files the platform would put to it.

The agent's stdout (JSON lines: serving, refused, connection_closed, upgraded...) is read by a thread;
tests wait on those lines with a deadline, never by sleeping.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.agent.protocol import AgentClient

SECRET = "test-secret-0123456789abcdef"


class ServingAgent:
    def __init__(self, pyz: Path, work_dir: Path, port: int, *, secret: str, env: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.port = port
        self.secret = secret
        secret_file = work_dir.parent / "agent-secret"
        secret_file.write_text(secret + "\n")
        self.process = subprocess.Popen(
            [sys.executable, str(pyz), "serve", "--port", str(port), "--secret-file", str(secret_file)],
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw_output: list[str] = []
        self._changed = threading.Condition()
        self._finished = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.raw_output.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass
                self._changed.notify_all()
        with self._changed:
            self._finished = True  # stdout closed: the process is gone (an exec keeps it open)
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 60.0, after: int = 0
    ) -> dict:
        """The first line (from index `after`) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._finished:
                    output = "".join(self.raw_output)[-3000:]
                    raise AssertionError(f"no matching agent line within {timeout_s} s; output:\n{output}")
                self._changed.wait(min(remaining, 0.5))

    def wait_serving(self, *, after: int = 0) -> dict:
        return self.wait_for(lambda line: line.get("event") == "serving", after=after, timeout_s=120)

    def socket(self, timeout_s: float = 30.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)

    def client(self, secret: str | None = None, *, timeout_s: float = 30.0) -> AgentClient:
        """A connected client after hello."""
        client = AgentClient(self.socket(timeout_s), secret or self.secret, timeout_s=timeout_s)
        client.hello()
        return client

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def clean_env(**extra: str) -> dict[str, str]:
    """The agent's environment: nothing of ours (FEDFLEET_*, PYTHONPATH), so only the pyz is importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFLEET_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def round_files(work_dir: Path, round_dir: Path) -> dict[str, bytes]:
    """Every file of a prepared phone work dir (shard, config, global weights) by its relative path."""
    files = {}
    for path in sorted(work_dir.rglob("*")):
        if path.is_file() and path.name != "agent.pyz":
            files[path.relative_to(work_dir).as_posix()] = path.read_bytes()
    assert any(name.startswith(round_dir.relative_to(work_dir).as_posix()) for name in files)
    return files


def tiny_job(job: str, *, epochs: int = 2, seed: int = 0) -> tuple[dict[str, bytes], str, dict]:
    """A small MLP job laid out as the platform lays one out on a phone: (files by relative path,
    the round dir, the expected update shapes). 45 samples, batches of 10: 5 steps per epoch."""
    import torch

    from training.fl import nets, wire

    model = nets.model_spec_for("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(45, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (45,), generator=g)
    weights = nets.initial_weights(model, seed=1)
    round_dir = f"jobs/{job}/rounds/round-1.0"
    config = {
        "algorithm": "fedavg",
        "model": model,
        "lr": 0.1,
        "epochs": epochs,
        "batch_size": 10,
        "seed": 42,
        "shard": f"jobs/{job}/shard.safetensors",
        "state_dir": f"jobs/{job}/state",
        "round": 1,
        "client_id": job,
    }
    files = {
        f"jobs/{job}/shard.safetensors": wire.dumps_tensors({"x": x, "y": y}),
        f"{round_dir}/global.safetensors": wire.dumps_tensors(weights),
        f"{round_dir}/config.json": json.dumps(config).encode(),
    }
    return files, round_dir, {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}
