"""Virtual phones on real loopback sockets, started in-process (a LabThread) or as a subprocess.

The session has its own ADB identity in tmp, trusted through an adb_keys file, and a second identity
that no phone trusts. Nothing here sleeps to synchronise: readiness is the lab's own start() returning
(its sockets listen) or a READY line; other waits poll a condition with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.ports import free_port_range as free_base_port
from devices import adb
from devices.adb_identity import AdbIdentity, load_or_create_identity
from devices.virtual.lab import LabConfig, LabThread, PhoneEndpoint
from devices.virtual.profile import PhoneProfile
from tests.conftest import wait_until

CONNECT_TIMEOUT_S = 20.0  # generous: the test machine has two cores shared with other work


def wait_for(condition: Callable[[], Any], *, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """tests.conftest.wait_until with this package's defaults (a short poll interval, 20 s)."""
    return wait_until(condition, timeout_s=timeout_s, interval_s=0.02, what=what)


@pytest.fixture(scope="session")
def identity(tmp_path_factory: pytest.TempPathFactory) -> AdbIdentity:
    return load_or_create_identity(tmp_path_factory.mktemp("identity") / "adb" / "adbkey")


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> AdbIdentity:
    """A key that no phone trusts."""
    return load_or_create_identity(tmp_path_factory.mktemp("stranger") / "adb" / "adbkey")


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory, identity: AdbIdentity) -> Path:
    path = tmp_path_factory.mktemp("keys") / "adb_keys"
    path.write_text(identity.public_key + "\n")
    return path


@pytest.fixture(scope="session")
def start_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LabThread]]:
    """Factory: start_lab(profiles, keys_file=..., accept_new_keys=False, use_zygote=False,
    agent_pyz=None) -> LabThread (agent_pyz: what phones with the Termux-like app install and run)."""
    labs: list[LabThread] = []

    def start(
        profiles: list[PhoneProfile],
        *,
        keys_file: Path | None,
        accept_new_keys: bool = False,
        use_zygote: bool = False,
        warm_zygote: bool = False,
        seed: int = 0,
        agent_pyz: Path | None = None,
    ) -> LabThread:
        config = LabConfig(
            lab_dir=tmp_path_factory.mktemp("lab"),
            base_port=free_base_port(len(profiles)),
            keys_file=keys_file,
            accept_new_keys=accept_new_keys,
            profiles=tuple(profiles),
            seed=seed,
            use_zygote=use_zygote,
            warm_zygote=warm_zygote,
            agent_pyz=agent_pyz,
        )
        lab = LabThread(config)
        lab.start()
        labs.append(lab)
        return lab

    yield start
    for lab in labs:
        lab.stop()


def connect(endpoint: PhoneEndpoint, identity: AdbIdentity, **kwargs: Any) -> adb.AdbConnection:
    return adb.connect(
        adb.Target("tcp", endpoint.address), identity=identity, timeout_s=CONNECT_TIMEOUT_S, **kwargs
    )


def by_serial(lab: LabThread, serial: str) -> PhoneEndpoint:
    return next(e for e in lab.endpoints if e.serial == serial)
