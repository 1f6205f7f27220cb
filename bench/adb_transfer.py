"""Push/pull throughput to one virtual phone: FedFleet's devices/adb.py against Google's `adb`.

    .venv/bin/python bench/adb_transfer.py [--size-mb 10] [--runs 5]

Starts one phone with `python -m devices.virtual` (its own process, as in a real lab), then alternates
runs of both clients on the same file and phone so that load from other processes hits both alike. Prints
JSON: median MB/s per client and direction and the ratios ours/google. Google's figures are wall-clock
times of `adb push|pull` (what a caller of the CLI waits for, client start included); adb's own report
("... MB/s (N bytes in T s)") is given beside them. Google's adb gets its own HOME and server port and
its server is killed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices import adb  # noqa: E402
from devices.adb_identity import load_or_create_identity  # noqa: E402

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_base_port() -> int:
    while True:
        port = free_port()
        if not 5555 <= port <= 5585:
            return port


def start_phone(work: Path, keys: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_base_port()
    command = [sys.executable, "-m", "devices.virtual", "--phones", "1", "--base-port", str(port)]
    command += ["--keys", str(keys), "--lab-dir", str(work / "lab"), "--no-zygote"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "READY":
            return process, f"127.0.0.1:{port}"
    raise RuntimeError(f"the virtual phone exited with {process.wait()}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


class GoogleAdb:
    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(free_port()))

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["adb", *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args)} failed: {done.stdout} {done.stderr}")
        return done.stdout + done.stderr


def reported_rate(output: str) -> float | None:
    match = re.search(r"([\d.]+) MB/s", output)
    return float(match.group(1)) if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedfleet-bench-"))
    home = work / "home"
    identity = load_or_create_identity(home / ".android" / "adbkey")  # Google's adb reads the same key
    keys = work / "adb_keys"
    keys.write_text(identity.public_key + "\n")
    source = work / "payload.bin"
    source.write_bytes(os.urandom(int(args.size_mb * MB)))
    expected = sha256(source)
    remote = "/data/local/tmp/bench.bin"
    google = GoogleAdb(home) if shutil.which("adb") else None
    phone, address = start_phone(work, keys)
    rates: dict[str, list[float]] = {"ours_push": [], "ours_pull": [], "google_push": [], "google_pull": []}
    reported: dict[str, list[float]] = {"google_push": [], "google_pull": []}
    try:
        connection = adb.connect(adb.Target("tcp", address), identity=identity)
        if google is not None:
            google("start-server")
            google("connect", address)
        for _ in range(args.runs):
            seconds, _ = timed(lambda: connection.push(source, remote))
            rates["ours_push"].append(args.size_mb / seconds)
            seconds, _ = timed(lambda: connection.pull(remote, work / "ours.bin"))
            rates["ours_pull"].append(args.size_mb / seconds)
            assert sha256(work / "ours.bin") == expected, "devices/adb.py round trip corrupted the file"
            if google is None:
                continue
            seconds, out = timed(lambda: google("-s", address, "push", str(source), remote))
            rates["google_push"].append(args.size_mb / seconds)
            reported["google_push"].append(reported_rate(str(out)) or 0.0)
            seconds, out = timed(lambda: google("-s", address, "pull", remote, str(work / "google.bin")))
            rates["google_pull"].append(args.size_mb / seconds)
            reported["google_pull"].append(reported_rate(str(out)) or 0.0)
            assert sha256(work / "google.bin") == expected, "adb round trip corrupted the file"
        connection.close()
    finally:
        if google is not None:
            subprocess.run(["adb", "kill-server"], env=google.env, capture_output=True, timeout=30)
        phone.terminate()
        phone.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    result: dict[str, object] = {
        "size_mb": args.size_mb,
        "runs": args.runs,
        "mb_per_s": {name: median(values) for name, values in rates.items()},
        "google_self_reported_mb_per_s": {name: median(values) for name, values in reported.items()},
        "all_runs_mb_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }
    if google is None:
        result["google"] = "adb not on PATH: Google's client was not measured"
    else:
        medians = result["mb_per_s"]
        assert isinstance(medians, dict)
        result["ratio_ours_over_google"] = {
            direction: round(medians[f"ours_{direction}"] / medians[f"google_{direction}"], 2)
            for direction in ("push", "pull")
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
