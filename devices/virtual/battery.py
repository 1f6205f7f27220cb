"""A battery that drains while the agent trains and charges while plugged, driven by elapsed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from devices.virtual.profile import BatteryProfile

STATUS_CHARGING = 2
STATUS_DISCHARGING = 3
STATUS_FULL = 5
HEALTH_GOOD = 2
TRAINING_HEAT_C = 6.0


@dataclass(frozen=True)
class BatteryState:
    level: int  # percent
    plugged: bool
    status: int  # Android BatteryManager status codes
    temperature_tenths_c: int
    voltage_mv: int
    technology: str


class Battery:
    """Integrates the charge level between events (training start/stop, plug changes, queries)."""

    def __init__(self, profile: BatteryProfile, clock: Callable[[], float] = time.monotonic) -> None:
        self._profile = profile
        self._clock = clock
        self._level = min(max(profile.level, 0.0), 100.0)
        self._plugged = profile.plugged
        self._training = 0
        self._updated = clock()
        self._lock = threading.Lock()

    def _rate_per_s(self) -> float:
        if self._plugged:
            return self._profile.charge_pct_per_min / 60
        drain = (
            self._profile.drain_train_pct_per_min if self._training else self._profile.drain_idle_pct_per_min
        )
        return -drain / 60

    def _advance(self) -> None:
        now = self._clock()
        self._level = min(max(self._level + self._rate_per_s() * (now - self._updated), 0.0), 100.0)
        self._updated = now

    def training_started(self) -> None:
        with self._lock:
            self._advance()
            self._training += 1

    def training_finished(self) -> None:
        with self._lock:
            self._advance()
            self._training = max(self._training - 1, 0)

    def set_plugged(self, plugged: bool) -> None:
        with self._lock:
            self._advance()
            self._plugged = plugged

    def set_level(self, level: float) -> None:
        with self._lock:
            self._advance()
            self._level = min(max(level, 0.0), 100.0)

    def state(self) -> BatteryState:
        with self._lock:
            self._advance()
            level = int(self._level)
            if self._plugged:
                status = STATUS_FULL if level >= 100 else STATUS_CHARGING
            else:
                status = STATUS_DISCHARGING
            heat = TRAINING_HEAT_C if self._training else 0.0
            return BatteryState(
                level=level,
                plugged=self._plugged,
                status=status,
                temperature_tenths_c=round((self._profile.temperature_c + heat) * 10),
                voltage_mv=self._profile.voltage_mv - (0 if level > 20 else 300),
                technology=self._profile.technology,
            )

    @property
    def empty(self) -> bool:
        return self.state().level <= 0 and not self._plugged
