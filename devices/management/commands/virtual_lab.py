"""`manage.py virtual_lab --phones N [...] [--register]`: host virtual phones, optionally as Device rows.

A thin wrapper over `python -m devices.virtual` (devices/virtual/cli.py) that defaults `--keys` to the
platform's own public key (so the platform is authorized) and the lab directory to the data directory.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from devices.adb_identity import data_dir, platform_identity
from devices.virtual.cli import add_lab_arguments, config_from_args, serve_until_signal
from devices.virtual.lab import LabError, PhoneEndpoint
from devices.virtual.profile import ProfileError

VIRTUAL_WORK_DIR = "/data/local/tmp/fedfleet/"
APP_WORK_DIR = "/sdcard/fedfleet/"  # devices/virtual/phone.py APP_WORK_DIR: where the app's agent works


class Command(BaseCommand):
    help = "Run N virtual phones (adbd emulators) on loopback ports; --register adds them as devices."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_lab_arguments(parser)
        parser.add_argument("--register", action="store_true", help="create or update a Device per phone")
        parser.add_argument(
            "--advertise-host",
            default="",
            help="host name the platform should use to reach the phones when registering them (default: the"
            " listening address; docker-compose uses the lab's service name)",
        )
        parser.add_argument(
            "--resident",
            type=int,
            default=0,
            metavar="K",
            help="register K of the phones whose shell runs python with the resident runtime (the"
            " platform keeps agent serve running); stock phones are always registered in app mode",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = argparse.Namespace(**options)
        default_keys = None if namespace.keys else platform_identity().public_key_path
        try:
            config = config_from_args(namespace, default_keys=default_keys, data_dir=data_dir())
            self.advertise_host = namespace.advertise_host
            if namespace.resident < 0:
                raise CommandError("--resident must be 0 or more")
            self.resident = namespace.resident
            on_started = self._register if namespace.register else None
            serve_until_signal(config, self._write_line, on_started=on_started)
        except (LabError, ProfileError) as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(f"cannot register the phones: {'; '.join(exc.messages)}") from exc
        except DatabaseError as exc:
            raise CommandError(f"cannot register the phones ({exc}); has `manage.py migrate` run?") from exc

    def _write_line(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def _register(self, endpoints: list[PhoneEndpoint]) -> None:
        from devices.services import register_or_update_device  # lazily: the lab itself needs no models

        resident_left = self.resident
        for endpoint in endpoints:
            runtime, work_dir, port, secret = "exec", VIRTUAL_WORK_DIR, 7000, ""
            if endpoint.stock and endpoint.agent_port is not None and endpoint.agent_secret:
                # What a person does for a stock phone: app mode, with the port and secret typed in Termux.
                runtime, work_dir = "app", APP_WORK_DIR
                port, secret = endpoint.agent_port, endpoint.agent_secret
            elif not endpoint.stock and resident_left > 0:
                runtime, resident_left = "resident", resident_left - 1
            register_or_update_device(
                name=endpoint.serial,
                transport="tcp",
                address=f"{self.advertise_host}:{endpoint.port}" if self.advertise_host else endpoint.address,
                tags=["virtual", runtime],
                agent_python="python3",
                work_dir=work_dir,
                runtime=runtime,
                agent_port=port,
                agent_secret=secret,
            )
