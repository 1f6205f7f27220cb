"""`python -m devices.virtual --phones N ...`: run a lab of virtual phones without Django.

Prints `serial  127.0.0.1:port  model` per phone, then `READY`, and stops on SIGINT/SIGTERM.
`--control-socket PATH` also opens the lab's control channel and its record of agent runs (control.py).
Without --keys the phones trust the platform's public key (`$FEDFLEET_DATA_DIR/adb/adbkey.pub`, else
`<repo>/var/adb/adbkey.pub`), which is created if missing, as the platform itself would on first use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from devices.virtual.cli import add_lab_arguments, config_from_args, default_data_dir, serve_until_signal
from devices.virtual.control import ControlError, serve_with_control
from devices.virtual.lab import LabError
from devices.virtual.profile import ProfileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.virtual", description=__doc__.splitlines()[0])
    add_lab_arguments(parser)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--control-socket",
        type=Path,
        default=None,
        help="Unix socket of the lab's control channel (faults, availability, agent-run record)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir = default_data_dir()
    default_keys = None
    if args.keys is None:
        # Django-free on purpose: the identity module only needs Django for settings, not at import.
        from devices.adb_identity import load_or_create_identity

        default_keys = load_or_create_identity(data_dir / "adb" / "adbkey").public_key_path
    try:
        config = config_from_args(args, default_keys=default_keys, data_dir=data_dir)
        if args.control_socket is not None:
            serve_with_control(config, args.control_socket, lambda line: print(line, flush=True))
        else:
            serve_until_signal(config, lambda line: print(line, flush=True))
    except (LabError, ProfileError, ControlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
