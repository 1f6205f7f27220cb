"""Chaos: a FedAvg job on a real lab while a seeded schedule kills and restarts its parts (issue 12).

    .venv/bin/python bench/chaos.py [--phones 20] [--rounds 40] [--seed S] [--deadline 20] [--timeout S]
    .venv/bin/python bench/chaos.py --phones 10 --rounds 12 --seed 1        # a quick run, a few minutes

The lab is the one `make demo` runs, on 127.0.0.1 only: Redis (append-only file), the devices and training
Celery workers, celery beat (whose schedule runs the round engine's watchdog), Daphne, and virtual phones
with their control channel (devices/virtual/control.py). A FedAvg job (digits, MLP, half the phones per
round, a --deadline s round deadline) runs while each of these faults is injected at least once, aimed at a
seeded round and landing while that round has phones in flight (a round that ends first passes the fault
on to the next one):

    redis            SIGKILL, a seeded 1-4 s outage, started again on the same port and data dir
    devices_worker   SIGKILL of the worker's process group, started again 0.5-2 s later
    training_worker  the same for the prefork training worker (its pool goes with it)
    web              Daphne SIGKILLed and started again on the same port
    phone_drop       a phone of the round drops its connection in the middle of its next push or pull
    phone_offline    a phone of the round goes offline mid-round and stays off until the next round has
                     committed without it (a whole round), then comes back
    phone_stall      a phone of the round hangs in its next agent run for deadline + 10 s

Faults of a family wait for each other — the broker and both workers; the web server; a phone's drop or
stall; a phone offline — and a phone's fault waits for a round that began after the broker and workers
were last whole (or it would land on a dead round and take no effect). A drop or stall is armed on a phone
and counts as injected once the phone's next transfer or run took it (`faults_armed_never_taken` if not).
A fault has "cleared" when what it broke is back: Redis answers PING, a worker answers a Celery ping, the
web server answers HTTP 200, the phone is online again, the dropped transfer happened, the stalled run
ended. The benchmark acts as the lab's supervisor as `make demo` does: a process that exits without being
killed here is started again, and reported under `unexpected_exits` with the tail of its log.

It prints progress lines, then one JSON document last. Figures come from the platform's rows (Round,
Job, Device) and the lab's own record of agent runs (<lab dir>/agent_runs.jsonl):

    rounds_lost            round numbers 1..rounds never committed (and committed_rounds short of --rounds)
    rounds_counted_twice   COMMITTED Round rows beyond one per number, and committed_rounds above the
                           committed rows (a counter that jumped); counter_anomalies lists what was seen
    duplicate_agent_runs   agent runs that started on a phone while another agent run of that phone was
                           still alive (two agents on one phone at once)
    phones_left_busy       phones busy or leased after the job ended, once a settle wait (on that condition,
                           at most --settle seconds) is over; busy_when_the_job_ended and after_the_job say
                           which were still held at the end and how long their release took
    longest_stall_s        the longest time from a fault clearing to the next committed round (from the
                           later clearing of a broker or worker fault still down then: rounds cannot
                           commit without those, whatever else cleared; and a fault whose next commit
                           came after a new broker or worker fault leaves that wait to the new one)
Targets (issue 12): the job completes; 0 rounds lost, 0 counted twice, 0 duplicate runs, 0 phones left
busy; longest stall <= deadline + 30 s. Everything stops by itself after --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, BenchLab, emit  # noqa: E402

from config.ports import free_port  # noqa: E402
from devices.virtual import control  # noqa: E402

KINDS = ("redis", "devices_worker", "training_worker", "web", "phone_drop", "phone_offline", "phone_stall")
WORKERS = {"devices_worker": ("worker-devices", "dev"), "training_worker": ("worker-training", "train")}
SUPERVISED = ("lab", "worker-devices", "worker-training", "beat", "web")
TICK_S = 0.1  # rounds can take about a second: a fault must find its round open
ROUND_DIR = re.compile(r"round-(\d+)\.(\d+)")
IN_FLIGHT = ("selected", "pushing", "training", "pulling")
# An agent may take a moment to notice its round closed (the cancel reaches it between steps).
OUTLIVE_GRACE_S = 5.0


def family(kind: str) -> str:
    """Faults of one family wait for each other (so each one's recovery can be seen on its own): the
    broker and the workers; the web server; a phone's drop or stall; a phone offline."""
    if kind in ("redis", *WORKERS):
        return "broker_and_workers"
    return "phone" if kind in ("phone_drop", "phone_stall") else kind


def progress(t0: float, message: str) -> None:
    print(f"[chaos {time.time() - t0:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------ the schedule
def schedule(rounds: int, rng: random.Random) -> list[tuple[int, str]]:
    """(round, kind), at most one per round. Every kind once, in a seeded order, in the first two thirds
    of the run (each may have to wait for the one before it in its family, so they start early); then,
    in the rounds left, extras drawn from all kinds up to one fault every other round. None in round 1
    (it pushes the agent and the shards) nor in the last round (no next round would show recovery)."""
    first = list(KINDS)
    rng.shuffle(first)
    early = list(range(2, max(len(KINDS) + 2, rounds * 2 // 3)))
    plan = list(zip(sorted(rng.sample(early, len(first))), first, strict=True))
    rest = sorted(set(range(2, rounds)) - {r for r, _ in plan})
    extras = min(len(rest), max(0, (rounds - 2) // 2 - len(KINDS)))
    plan += [(r, rng.choice(KINDS)) for r in sorted(rng.sample(rest, extras))]
    return sorted(plan)


@dataclass
class Fault:
    kind: str
    round: int  # the round it is aimed at (moved on when that round ended before it could be injected)
    phase: str = "pending"  # pending -> active -> cleared
    injected_at: float | None = None
    cleared_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0  # seeded: how long into the round it lands
    seen_round_at: float | None = None
    # A phone's drop or stall is armed when injected and takes effect at the phone's next transfer or run
    # (if it has one before the job ends); everything else takes effect when injected.
    fired: bool = False


# ------------------------------------------------------------------------------------------ the run
class Chaos:
    def __init__(self, lab: BenchLab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.rng = random.Random(args.seed)
        self.faults = [Fault(kind, rnd) for rnd, kind in schedule(args.rounds, self.rng)]
        for fault in self.faults:
            fault.delay_s = round(self.rng.uniform(0.0, 0.5), 2)
        self.t0 = time.time()
        self.job: Any = None
        self.counter_anomalies: list[dict[str, Any]] = []
        self.last_committed = 0
        self.unexpected_exits: list[dict[str, Any]] = []
        self.killed: set[str] = set()  # processes this run killed and has not restarted yet
        self.host = socket.gethostname()

    # ---------------------------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        progress(self.t0, message)

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.lab.control_socket is not None
        answer = control.request(self.lab.control_socket, message)
        if not answer.get("ok"):
            raise RuntimeError(f"lab control refused {message}: {answer.get('error')}")
        return answer

    def worker_answers(self, node: str) -> bool:
        from config.celery import app  # noqa: PLC0415

        try:
            return bool(app.control.ping(destination=[f"{node}@{self.host}"], timeout=1.0))
        except Exception:  # noqa: BLE001 - Redis not back yet: not answering
            return False

    def round_clients(self, number: int) -> list[tuple[str, str]]:
        """(phone serial, state) of the open attempt of round `number`."""
        from training.models import ClientResult, RoundStatus  # noqa: PLC0415

        rows = ClientResult.objects.filter(
            round__job=self.job, round__number=number, round__status=RoundStatus.TRAINING
        ).values_list("device__name", "state")
        return list(rows)

    def pick_phone(self, number: int, prefer: tuple[str, ...]) -> str | None:
        """A phone of the round in one of the `prefer` states (else any in flight), not faulted already."""
        taken = {f.detail.get("phone") for f in self.faults if f.phase == "active"}
        clients = [(serial, state) for serial, state in self.round_clients(number) if serial not in taken]
        for states in (prefer, IN_FLIGHT):
            candidates = sorted(serial for serial, state in clients if state in states)
            if candidates:
                return self.rng.choice(candidates)
        return None

    # ---------------------------------------------------------------------------------- faults
    def inject(self, fault: Fault) -> bool:
        """Start a fault; False when the round gave it nothing to act on (it is aimed at the next one)."""
        kind = fault.kind
        if kind in ("phone_drop", "phone_offline", "phone_stall"):
            # drop: its next transfer is still ahead (the push, or the pull after training); stall: its
            # agent has not started yet; offline: it is in the middle of its run
            prefer = {
                "phone_drop": ("selected", "pushing", "training"),
                "phone_stall": ("selected", "pushing"),
                "phone_offline": ("training", "pushing"),
            }[kind]
            phone = self.pick_phone(fault.round, prefer)
            if phone is None:
                return False
            fault.detail["phone"] = phone
            if kind == "phone_drop":
                self.control({"op": "drop_transfer", "phone": phone})
            elif kind == "phone_offline":
                self.control({"op": "online", "phone": phone, "online": False})
            else:
                seconds = self.args.deadline + 10
                fault.detail["hang_s"] = seconds
                self.control({"op": "stall_run", "phone": phone, "seconds": seconds})
        elif kind == "redis":
            fault.detail["outage_s"] = round(self.rng.uniform(1.0, 4.0), 2)
            self.lab.crash_redis()
        elif kind == "web":
            self.killed.add("web")
            self.lab.kill("web")
            fault.detail["restart_after_s"] = round(self.rng.uniform(0.5, 2.0), 2)
        else:
            name, _node = WORKERS[kind]
            self.killed.add(name)
            self.lab.kill(name)
            fault.detail["restart_after_s"] = round(self.rng.uniform(0.5, 2.0), 2)
        fault.phase, fault.injected_at = "active", time.time()
        fault.fired = kind not in ("phone_drop", "phone_stall")
        self.say(f"fault {kind} injected in round {fault.round} {fault.detail}")
        return True

    def step(self, fault: Fault, committed: int) -> None:
        """Move an active fault on; mark it cleared once what it broke is back."""
        assert fault.injected_at is not None
        elapsed = time.time() - fault.injected_at
        kind = fault.kind
        cleared = False
        if kind == "redis":
            if elapsed >= fault.detail["outage_s"]:
                self.lab.restart_redis()  # returns once it answers PING
                cleared = True
        elif kind in ("web", *WORKERS):
            name = "web" if kind == "web" else WORKERS[kind][0]
            if name in self.killed and elapsed >= fault.detail["restart_after_s"]:
                self.lab.restart(name)
                self.killed.discard(name)
                fault.detail["restarted_at_s"] = round(time.time() - self.t0, 2)
            if name not in self.killed:
                cleared = self.lab.web_answers() if kind == "web" else self.worker_answers(WORKERS[kind][1])
        elif kind == "phone_drop":
            phone = self.control({"op": "status"})["phones"][fault.detail["phone"]]
            cleared = fault.fired = phone["drops_armed"] == 0  # its transfer has begun: dropped at once
        elif kind == "phone_offline":
            if committed >= fault.round + 1:  # the whole next round ran and committed without it
                self.control({"op": "online", "phone": fault.detail["phone"], "online": None})
                cleared = True
        elif kind == "phone_stall":
            phone = self.control({"op": "status"})["phones"][fault.detail["phone"]]
            fault.fired = phone["stall_armed_s"] == 0  # a run took it
            end = self.stalled_run_end(fault.detail["phone"])
            if end is not None:
                fault.detail.update(end)
                if end["stalled_run_round"] is not None:
                    fault.round = end["stalled_run_round"]  # where the armed stall really landed
                cleared = True
        if cleared:
            fault.phase, fault.cleared_at = "cleared", time.time()
            self.say(f"fault {kind} cleared after {fault.cleared_at - fault.injected_at:.1f} s")

    def stalled_run_end(self, phone: str) -> dict[str, Any] | None:
        """The exit of the phone's stalled run once it has ended (cancelled, or ran after its stall)."""
        starts: dict[int, list[str]] = {}
        starts_at: dict[int, float] = {}
        for record in read_run_log(self.run_log_path()):
            if record["phone"] != phone:
                continue
            if record["event"] == "start":
                starts[record["run"]] = record["args"]
                starts_at[record["run"]] = record["t"]
            elif record.get("stalled_s"):
                found = ROUND_DIR.search(" ".join(starts.get(record["run"], [])))
                return {
                    "stalled_run_status": record["status"],  # None: cancelled
                    "stalled_run_round": int(found[1]) if found else None,
                    "stalled_run_lasted_s": round(record["t"] - starts_at[record["run"]], 2),
                }
        return None

    def run_log_path(self) -> Path:
        return self.lab.work / "lab" / control.RUN_LOG_NAME

    # ---------------------------------------------------------------------------------- supervision
    def supervise(self) -> None:
        """As `make demo` does: start again what exited without being killed here, and say so."""
        for name in SUPERVISED:
            process = self.lab.named.get(name)
            if process is None or name in self.killed or process.poll() is None:
                continue
            tail = (self.lab.work / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            self.unexpected_exits.append(
                {"process": name, "status": process.returncode, "at_s": round(time.time() - self.t0, 1), "log_tail": tail}
            )  # fmt: skip
            self.say(f"{name} exited by itself with status {process.returncode}: started again")
            self.lab.restart(name)
        redis_pending = any(f.kind == "redis" and f.phase == "active" for f in self.faults)
        if not redis_pending and self.lab.redis.process.poll() is not None:
            self.unexpected_exits.append(
                {"process": "redis", "status": self.lab.redis.process.returncode, "at_s": round(time.time() - self.t0, 1)}
            )  # fmt: skip
            self.lab.restart_redis()

    # ---------------------------------------------------------------------------------- the loop
    def observe(self) -> tuple[Any, tuple[int, str, datetime] | None]:
        """The job row, its open round (number, status, started_at), and a check of its committed-round
        counter."""
        from training.models import Job, Round, RoundStatus  # noqa: PLC0415

        # No transaction: on SQLite this project's transactions are BEGIN IMMEDIATE, which would take the
        # write lock from the workers ten times a second. The counter is read before and after the rows
        # instead; only a tick where it did not move is checked.
        before = Job.objects.values_list("committed_rounds", flat=True).get(pk=self.job.pk)
        numbers = list(
            Round.objects.filter(job_id=self.job.pk, status=RoundStatus.COMMITTED).values_list(
                "number", flat=True
            )
        )
        open_round = (
            Round.objects.filter(job_id=self.job.pk, status__in=("configuring", "training", "aggregating"))
            .order_by("-number", "-attempt")
            .values_list("number", "status", "started_at")
            .first()
        )
        job = Job.objects.get(pk=self.job.pk)
        committed = job.committed_rounds
        if committed == before:
            self.check_counter(committed, set(numbers))
        if committed > self.last_committed:
            self.say(f"round {committed} committed (accuracy {job.last_accuracy})")
        self.last_committed = max(self.last_committed, committed)
        return job, open_round

    def check_counter(self, committed: int, numbers: set[int]) -> None:
        problem = None
        if committed < self.last_committed:
            problem = f"committed_rounds went back from {self.last_committed} to {committed}"
        elif committed != len(numbers) or committed != max(numbers, default=0):
            problem = f"committed_rounds {committed} but committed rounds {sorted(numbers)}"
        elif committed > self.last_committed + 1:
            problem = f"committed_rounds jumped from {self.last_committed} to {committed}"
        if problem and (not self.counter_anomalies or self.counter_anomalies[-1]["what"] != problem):
            self.counter_anomalies.append({"at_s": round(time.time() - self.t0, 1), "what": problem})
            self.say(f"counter anomaly: {problem}")

    def run(self) -> dict[str, Any]:
        from django.contrib.auth import get_user_model  # noqa: PLC0415

        from training.jobs.config import parse_job_config  # noqa: PLC0415
        from training.jobs.services import create_job  # noqa: PLC0415

        args = self.args
        owner, _ = get_user_model().objects.get_or_create(username="bench")
        config = {
            "name": "bench-chaos",
            "dataset": "digits",
            "partition": "iid",
            "model": "mlp",
            "algorithm": "fedavg",
            "rounds": args.rounds,
            "clients_per_round": max(2, args.phones // 2),
            "round_deadline_s": args.deadline,
            "local_epochs": args.epochs,
            "influence": "off",  # the round engine is what is measured; influence would only add load
            "seed": args.seed,
        }
        self.t0 = time.time()
        self.job = create_job(owner, parse_job_config(config))
        self.say(f"job {self.job.pk}: {args.rounds} rounds, deadline {args.deadline} s; schedule "
                 + ", ".join(f"r{f.round}:{f.kind}" for f in self.faults))  # fmt: skip
        ends = time.monotonic() + args.timeout
        timed_out = False
        while True:
            job, open_round = self.observe()
            if job.status in ("completed", "failed", "cancelled", "paused"):
                break
            if time.monotonic() > ends:
                timed_out = True
                self.say(f"global timeout ({args.timeout:.0f} s): stopping")
                break
            self.supervise()
            for fault in self.faults:
                if fault.phase == "active":
                    self.step(fault, job.committed_rounds)
            self.maybe_inject(job, open_round)
            time.sleep(TICK_S)
        self.finish_faults()
        return self.report(job, timed_out)

    def maybe_inject(self, job: Any, open_round: tuple[int, str, datetime] | None) -> None:
        """Inject the pending faults aimed at the open round, once it has trained for the fault's delay;
        one active fault per family at a time (processes; a phone's drop or stall; a phone offline)."""
        busy = {family(f.kind) for f in self.faults if f.phase == "active"}
        open_number, open_status, open_started = open_round or (None, None, None)
        # A phone's fault must land in a round that can run, or it takes no effect: one that began
        # after the last broker or worker fault cleared.
        process_cleared = [
            f.cleared_at for f in self.faults if family(f.kind) == "broker_and_workers" and f.cleared_at
        ]
        healthy = open_started is not None and open_started.timestamp() > max(process_cleared, default=0.0)
        for fault in self.faults:
            if fault.phase != "pending":
                continue
            if job.committed_rounds >= fault.round:  # its round ended before it could land: the next one
                fault.round = job.committed_rounds + 1
                fault.seen_round_at = None
            if family(fault.kind) in busy or open_number != fault.round or open_status != "training":
                continue
            if fault.kind.startswith("phone") and ("broker_and_workers" in busy or not healthy):
                continue
            if fault.round >= self.args.rounds and fault.kind == "phone_offline":
                continue  # no round after it to run without the phone
            if fault.seen_round_at is None:
                fault.seen_round_at = time.time()
            if time.time() - fault.seen_round_at < fault.delay_s:
                continue
            if not any(state in IN_FLIGHT for _, state in self.round_clients(fault.round)):
                continue
            if self.inject(fault):
                busy.add(family(fault.kind))
            else:
                fault.round += 1

    def finish_faults(self) -> None:
        """The run ended with faults still on (a job that ended early, the timeout): bring back what is
        down, so the settle wait is fair. A phone's armed drop or stall stays on: settle() watches it."""
        for fault in self.faults:
            if fault.phase != "active" or fault.kind in ("phone_drop", "phone_stall"):
                continue
            if fault.kind == "redis" and self.lab.redis.process.poll() is not None:
                self.lab.restart_redis()
            if fault.kind == "phone_offline":
                self.control({"op": "online", "phone": fault.detail["phone"], "online": None})
            fault.phase, fault.cleared_at = "cleared", time.time()
            fault.detail["brought_back_after_the_run"] = True
        for name in list(self.killed):
            self.lab.restart(name)
            self.killed.discard(name)

    # ---------------------------------------------------------------------------------- the figures
    def settle(self, committed: int) -> dict[str, Any]:
        """Wait (at most --settle s) until no phone is busy or leased and no agent runs, moving the faults
        still active on meanwhile (a stalled run ending); what is left then, and when each became true."""
        from django.db.models import Q  # noqa: PLC0415

        from devices.models import Device  # noqa: PLC0415

        began = time.monotonic()
        released_after = ended_after = None
        busy_at_first: list[str] | None = None
        while True:
            for fault in self.faults:
                if fault.phase == "active":
                    self.step(fault, committed)
            busy = list(
                Device.objects.filter(Q(status="busy") | Q(lease_job_id__isnull=False)).values(
                    "name", "status", "lease_job_id"
                )
            )
            phones = self.control({"op": "status"})["phones"]
            alive = {serial: p["agents_running"] for serial, p in phones.items() if p["agents_running"]}
            waited = round(time.monotonic() - began, 1)
            if busy_at_first is None:
                busy_at_first = sorted(phone["name"] for phone in busy)
            released_after = waited if released_after is None and not busy else released_after
            ended_after = waited if ended_after is None and not alive else ended_after
            if (not busy and not alive) or waited > self.args.settle:
                for phone in busy:
                    phone["agent_running"] = phone["name"] in alive
                return {
                    "busy": busy,
                    "alive": alive,
                    "busy_when_the_job_ended": busy_at_first,
                    "phones_released_after_s": released_after,
                    "agents_ended_after_s": ended_after,
                }
            time.sleep(0.5)

    def report(self, job: Any, timed_out: bool) -> dict[str, Any]:
        from training.models import ClientResult, JobLogEntry, Round, RoundStatus  # noqa: PLC0415

        ended = job.status in ("completed", "failed", "cancelled")
        settled = self.settle(job.committed_rounds) if ended else {"busy": [], "alive": {}}
        busy = settled["busy"]
        rounds = list(Round.objects.filter(job=job).order_by("number", "attempt"))
        committed = [r for r in rounds if r.status == RoundStatus.COMMITTED]
        per_number = Counter(r.number for r in committed)
        lost = [n for n in range(1, self.args.rounds + 1) if n not in per_number]
        twice = sum(c - 1 for c in per_number.values() if c > 1) + max(
            0, job.committed_rounds - len(per_number)
        )
        commits = sorted(r.finished_at.timestamp() for r in committed if r.finished_at)
        faults = [self.fault_figures(f, commits, ended) for f in self.faults]
        stalls = [f["stall_s"] for f in faults if f["stall_s"] is not None]
        ends = {f"{r.number}.{r.attempt}": r.finished_at.timestamp() for r in rounds if r.finished_at}
        runs = agent_runs(read_run_log(self.run_log_path()), ends)
        states = Counter(ClientResult.objects.filter(job=job).values_list("state", flat=True))
        warnings = JobLogEntry.objects.filter(job=job, level__in=("warning", "error")).order_by("at")
        deadline = self.args.deadline
        longest = max(stalls) if stalls else None
        figures = {
            "job_completed": job.status == "completed",
            "rounds_lost": len(lost) + (0 if lost else max(0, self.args.rounds - job.committed_rounds)),
            "rounds_counted_twice": twice,
            "duplicate_agent_runs": len(runs["duplicates"]),
            "phones_left_busy": len(busy),
            "longest_stall_s": longest,
        }
        return {
            "benchmark": "chaos",
            "phones": self.args.phones,
            "rounds": self.args.rounds,
            "seed": self.args.seed,
            "deadline_s": deadline,
            "job_status": job.status,
            "job_error": job.error,
            "timed_out": timed_out,
            "wall_s": round(time.time() - self.t0, 1),
            "code": code_state(),
            "faults_injected": dict(Counter(f.kind for f in self.faults if f.fired)),
            "faults_not_injected": [f.kind for f in self.faults if f.injected_at is None],
            "faults_armed_never_taken": [
                f.kind for f in self.faults if f.injected_at is not None and not f.fired
            ],
            "faults": faults,
            "rounds_committed": job.committed_rounds,
            "committed_round_rows": len(committed),
            "abandoned_attempts": sum(1 for r in rounds if r.status == RoundStatus.ABANDONED),
            "lost_round_numbers": lost,
            **figures,
            "counter_anomalies": self.counter_anomalies,
            "duplicate_runs": runs["duplicates"][:20],
            "agent_runs": runs["total"],
            "agent_runs_cancelled": runs["cancelled"],
            "reruns_of_a_round_on_one_phone": runs["reruns"],
            "agents_outliving_their_round": runs["outliving"],
            "agents_alive_at_end": settled["alive"],
            "busy_phones": busy,
            "busy_when_the_job_ended": settled.get("busy_when_the_job_ended"),
            "after_the_job": {k: v for k, v in settled.items() if k.endswith("_after_s")},
            "final_accuracy": job.last_accuracy,
            "client_states": dict(states),
            "unexpected_exits": self.unexpected_exits,
            "job_warnings": [f"r{e.round_number}: {e.message}" for e in warnings][-30:],
            "targets": {
                "job_completes": figures["job_completed"],
                "rounds_lost_0": figures["rounds_lost"] == 0,
                "rounds_counted_twice_0": twice == 0,
                "duplicate_agent_runs_0": figures["duplicate_agent_runs"] == 0,
                "phones_left_busy_0": figures["phones_left_busy"] == 0 and ended,
                f"longest_stall_le_{deadline + 30:g}_s": longest is not None and longest <= deadline + 30,
            },
        }

    def stall_from(self, fault: Fault) -> float | None:
        """When the lab could run again after `fault`: its clearing, or later if a broker or worker fault
        was still down then (rounds cannot commit without them; a phone or web fault does not stop them)."""
        if fault.cleared_at is None:
            return None
        since = fault.cleared_at
        for other in self.faults:
            if family(other.kind) != "broker_and_workers" or other is fault or other.injected_at is None:
                continue
            if other.injected_at <= fault.cleared_at and (
                other.cleared_at is None or other.cleared_at > since
            ):
                if other.cleared_at is None:
                    return None
                since = other.cleared_at
        return since

    def fault_figures(self, fault: Fault, commits: list[float], ended: bool) -> dict[str, Any]:
        stall = None
        since = self.stall_from(fault)
        superseded = None
        if since is not None:
            after = [c for c in commits if c > since]
            until = after[0] if after else None if ended else time.time()
            # A broker or worker fault injected before that commit stalls the rounds itself: the wait is
            # its stall (measured on its own), not this fault's.
            later = [
                f for f in self.faults
                if family(f.kind) == "broker_and_workers" and f is not fault and f.injected_at is not None
                and since < f.injected_at < (until or math.inf)
            ]  # fmt: skip
            if later:
                superseded = later[0].kind
            elif until is not None:  # not ended and nothing committed since: stalled until the run stopped
                stall = round(until - since, 2)
        overlapped = since is not None and fault.cleared_at is not None and since > fault.cleared_at
        return {
            "kind": fault.kind,
            "round": fault.round,
            "injected_at_s": None if fault.injected_at is None else round(fault.injected_at - self.t0, 2),
            "cleared_after_s": None
            if fault.cleared_at is None or fault.injected_at is None
            else round(fault.cleared_at - fault.injected_at, 2),
            "stall_s": stall,
            **({"stall_taken_over_by": superseded} if superseded else {}),
            **(
                {"stall_measured_after_the_broker_or_worker_fault_then_down_s": round(since - self.t0, 2)}
                if overlapped and since is not None
                else {}
            ),  # fmt: skip
            **fault.detail,
        }


# ------------------------------------------------------------------------------------------ the record
def code_state() -> dict[str, Any]:
    """The commit measured, and the files changed beside it: others edit the engine while this runs."""
    import subprocess  # noqa: PLC0415

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout

    changed = [
        line[3:] for line in git("status", "--porcelain", "--", "training", "devices", "config").splitlines()
    ]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_files": changed}


def read_run_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return records


def agent_runs(records: list[dict[str, Any]], round_ends: dict[str, float]) -> dict[str, Any]:
    """Duplicates (a run started while another of the same phone was alive), cancelled runs, the
    (phone, round) pairs that ran more than once one after the other (a re-driven or taken-over run), and
    runs still alive more than OUTLIVE_GRACE_S after their round (attempt) ended: an agent nobody stopped."""
    starts = {r["run"]: r for r in records if r["event"] == "start"}
    exits = {r["run"]: r for r in records if r["event"] == "exit"}

    def round_of(run: int) -> str | None:
        found = ROUND_DIR.search(" ".join(starts[run]["args"])) if run in starts else None
        return f"{found[1]}.{found[2]}" if found else None

    duplicates = [
        {
            "phone": r["phone"],
            "at": datetime.fromtimestamp(r["t"]).isoformat(timespec="seconds"),
            "run_round": round_of(r["run"]),
            "alive_rounds": [round_of(other) for other in r["alive"]],
        }
        for r in starts.values()
        if r["alive"]
    ]
    per_round: dict[tuple[str, str | None], int] = defaultdict(int)
    for run, start in starts.items():
        per_round[(start["phone"], round_of(run))] += 1
    outliving = []
    for run, start in starts.items():
        ended = round_ends.get(round_of(run) or "")
        exit_t = exits[run]["t"] if run in exits else time.time()
        if ended is not None and exit_t - ended > OUTLIVE_GRACE_S:
            outliving.append(
                {"phone": start["phone"], "round": round_of(run), "alive_after_round_ended_s": round(exit_t - ended, 1),
                 "still_running": run not in exits, "hung_by_the_benchmark": bool(exits.get(run, {}).get("stalled_s"))}
            )  # fmt: skip
    return {
        "outliving": outliving,
        "total": len(starts),
        "cancelled": sum(1 for e in exits.values() if e["status"] is None),
        "duplicates": duplicates,
        "reruns": sum(n - 1 for n in per_round.values() if n > 1),
    }


def hard_limit(*_: object) -> None:
    raise TimeoutError("chaos: the hard time limit passed (the main loop was blocked); tearing the lab down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=20.0, help="the job's round deadline (s)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="local epochs (default 10: rounds of a few seconds, so a fault lands mid-round)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="global limit (s); default 300 + rounds x (deadline + 30)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=75.0,
        help="at most this long for phones to be released after the job (default 75: the engine's own "
        "recovery of a dead run's phone takes up to its 60 s lease grace plus a watchdog tick)",
    )
    args = parser.parse_args()
    if args.rounds < len(KINDS) + 2:
        parser.error(
            f"--rounds must be at least {len(KINDS) + 2}: each of the {len(KINDS)} faults needs a round"
        )
    if args.phones < 4:
        parser.error("--phones must be at least 4 (one phone offline, one stalled, and a round to commit)")
    args.timeout = args.timeout or 300 + args.rounds * (args.deadline + 30)
    # The last resort if something blocks the loop itself (a hung database call): stop, never hang.
    signal.signal(signal.SIGALRM, hard_limit)
    signal.alarm(int(args.timeout + 300))

    with BenchLab(
        args.phones,
        seed=args.seed,
        killable=True,
        control=True,
        # FEDFLEET_HTTPS=0: a loopback lab without TLS, so the web server's answer is a plain 200
        extra_env={"FEDFLEET_HTTPS": "0", "FEDFLEET_PROBE_INTERVAL_S": "5"},
    ) as lab:
        lab.start_web(free_port())
        began = time.monotonic()
        while not lab.web_answers():
            if time.monotonic() - began > 60:
                raise RuntimeError("the web server did not answer within 60 s")
            time.sleep(0.2)
        result = Chaos(lab, args).run()
        result["logs"] = str(lab.work)
        signal.alarm(0)
        emit(result)  # last: the teardown prints nothing


if __name__ == "__main__":
    main()
