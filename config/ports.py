"""Loopback port helpers for the processes the demo, the tests and the benchmarks start themselves."""

from __future__ import annotations

import random
import socket

# Google's adb server adopts whatever answers on 5555-5585 as an emulator: virtual phones stay out.
ADB_SCAN_PORTS = range(5555, 5586)


def free_port() -> int:
    """A port the kernel says is free now (it may be taken again before use: bind promptly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_range(count: int, *, low: int = 20000, high: int = 60000) -> int:
    """A first port P with P..P+count-1 free and clear of adb's scan range (for a lab of `count` phones)."""
    for _ in range(200):
        first = random.randrange(low, high - count)
        ports = range(first, first + count)
        if not set(ports) & set(ADB_SCAN_PORTS) and all(port_is_free(p) for p in ports):
            return first
    raise RuntimeError(f"no run of {count} free ports between {low} and {high}")
