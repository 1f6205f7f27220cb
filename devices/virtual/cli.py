"""Command-line front end shared by `python -m devices.virtual` and `manage.py virtual_lab`."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from devices.virtual.lab import DEFAULT_BASE_PORT, LabConfig, LabThread, PhoneEndpoint
from devices.virtual.misbehaviour import add_misbehaviour_arguments, misbehaviour_from_args
from devices.virtual.scenarios import add_scenario_arguments, hold_from_args, scenario_from_args


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phones", type=int, default=3, help="number of phones (default 3)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port (default 15555)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--keys", type=Path, default=None, help="adb_keys file the phones trust")
    parser.add_argument(
        "--accept-new-keys", action="store_true", help="authorize unknown keys, like tapping 'Always allow'"
    )
    parser.add_argument("--profiles", type=Path, default=None, help="JSON file of phone profiles")
    parser.add_argument("--seed", type=int, default=0, help="seed for availability, battery and faults")
    parser.add_argument("--lab-dir", type=Path, default=None, help="where phone sandboxes live")
    parser.add_argument(
        "--no-zygote", action="store_true", help="start a fresh interpreter per agent run (slower)"
    )
    parser.add_argument(
        "--warm-zygote",
        action="store_true",
        help="import torch for the agents when the lab starts, not on the first agent run",
    )
    parser.add_argument(
        "--agent-pyz",
        type=Path,
        default=None,
        help="agent.pyz for phones with the Termux-like app (stock profiles): installed and started there",
    )
    parser.add_argument(
        "--seed-data",
        type=Path,
        default=None,
        help="a directory of phone-<index>/ folders copied into each phone's work dir (phone-resident data; "
        "manage.py phone_data_files writes one)",
    )
    add_scenario_arguments(parser)
    add_misbehaviour_arguments(parser)


def default_data_dir() -> Path:
    """$FEDFLEET_DATA_DIR, else <repo>/var (Django's setting reads the same variable)."""
    env = os.environ.get("FEDFLEET_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "var"


def config_from_args(args: argparse.Namespace, *, default_keys: Path | None, data_dir: Path) -> LabConfig:
    return LabConfig(
        lab_dir=args.lab_dir or data_dir / "virtual_lab",
        phones=args.phones,
        base_port=args.base_port,
        host=args.host,
        keys_file=args.keys or default_keys,
        accept_new_keys=args.accept_new_keys,
        profiles_file=args.profiles,
        seed=args.seed,
        use_zygote=not args.no_zygote,
        warm_zygote=args.warm_zygote and not args.no_zygote,
        scenario=scenario_from_args(args),
        hold_online_s=hold_from_args(args),
        misbehaviour=misbehaviour_from_args(args),
        agent_pyz=args.agent_pyz,
        seed_data=args.seed_data,
    )


def phone_line(endpoint: PhoneEndpoint) -> str:
    return f"{endpoint.serial}  {endpoint.address}  {endpoint.model}"


def serve_until_signal(
    config: LabConfig,
    write: Callable[[str], None],
    on_started: Callable[[list[PhoneEndpoint]], None] | None = None,
) -> None:
    """Start the lab, announce each phone and READY, then run until SIGINT or SIGTERM.

    SIGUSR1 ends a --hold-online (the scenario starts: prints SCENARIO STARTED); SIGUSR2 moves the
    scenario's clock one period forward (the next alternating turn: prints SCENARIO ADVANCED).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    lab = LabThread(config)

    def start_scenario(*_: object) -> None:
        if config.hold_online_s is not None:
            lab.release_hold_soon()
            write("SCENARIO STARTED")

    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, start_scenario)

    def next_turn(*_: object) -> None:
        if config.scenario is not None:
            lab.advance_clock_soon(config.scenario.period)
            write("SCENARIO ADVANCED")

    previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, next_turn)
    try:
        endpoints = lab.start()
        if on_started is not None:
            on_started(endpoints)
        for endpoint in endpoints:
            write(phone_line(endpoint))
        write("READY")
        stop.wait()
    finally:
        lab.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
