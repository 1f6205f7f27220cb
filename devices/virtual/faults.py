"""Injected faults: dropped connections, stalls and a slow link, drawn from a seeded RNG — or armed
one at a time while the lab runs (arm_transfer_drop: the lab's control channel, control.py)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from devices.virtual.profile import FaultProfile


@dataclass(frozen=True)
class TransferPlan:
    drop_at_byte: int | None  # abort the connection once this many bytes have moved
    stall_at_byte: int | None
    stall_s: float


@dataclass(frozen=True)
class CommandPlan:
    drop_after_s: float | None  # abort this long after the start (or when the command ends, if sooner)
    stall_s: float  # freeze before running


class FaultInjector:
    def __init__(self, profile: FaultProfile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        self.armed_drops = 0  # transfers still to drop on purpose (arm_transfer_drop)
        self.drops_planned = 0  # armed drops handed to a transfer so far

    def arm_transfer_drop(self) -> None:
        """Drop the connection during this phone's next push or pull, whatever the profile's odds."""
        self.armed_drops += 1

    def plan_transfer(self, size: int) -> TransferPlan:
        p = self.profile
        drop = self._rng.randrange(max(size, 1)) if self._rng.random() < p.drop_transfer_p else None
        if self.armed_drops:
            # After the first data block: mid-transfer for anything longer than one block, and before
            # the final reply for a shorter file (TransferWatch.finished) -- never a completed transfer.
            self.armed_drops -= 1
            self.drops_planned += 1
            drop = 1
        stall = self._rng.randrange(max(size, 1)) if self._rng.random() < p.stall_p else None
        return TransferPlan(drop_at_byte=drop, stall_at_byte=stall, stall_s=p.stall_s)

    def plan_command(self) -> CommandPlan:
        p = self.profile
        drop = (
            self._rng.uniform(0, p.drop_command_window_s) if self._rng.random() < p.drop_command_p else None
        )
        stall = p.stall_s if self._rng.random() < p.stall_p else 0.0
        return CommandPlan(drop_after_s=drop, stall_s=stall)


class Throttle:
    """Token bucket limiting one direction of a link to `rate` bytes/s (0 = unlimited)."""

    def __init__(self, rate_bps: float, burst_s: float = 0.05) -> None:
        self.rate = rate_bps
        self._capacity = rate_bps * burst_s
        self._tokens = self._capacity
        self._updated = time.monotonic()

    async def consume(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
