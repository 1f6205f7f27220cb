"""`manage.py phone_data_files --out DIR --phones N [--dataset D] [--dataset-params JSON] [--partition P]
[--partition-param X] [--seed S] [--format npz|csv] [--data-dir data]`: files for phone-resident jobs.

Splits a data set's training part among N phones as a job would (the same data set and partition
validation as a job config) and writes `DIR/phone-<index>/<data-dir>/train.npz` per phone — what
`virtual_lab --seed-data DIR` copies into each virtual phone's work dir, and the layout a real phone
needs (README, "Data that never leaves the phone"). Prints each phone's sample count as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.engine.jobdata import load_job_dataset
from training.engine.phone_data import write_seed_files
from training.engine.prepare import PARTITION_PARAM_NAMES
from training.fl.partition import partition_dataset
from training.jobs.config import JobConfigError, parse_job_config

EXIT_INVALID = 2


class Command(BaseCommand):
    help = "Write per-phone data files (phone-resident data) from a data set and a partition"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--phones", type=int, required=True)
        parser.add_argument("--dataset", default="digits")
        parser.add_argument("--dataset-params", default="{}", help="JSON object, e.g. '{\"dataset_id\": 3}'")
        parser.add_argument("--partition", default="iid")
        parser.add_argument("--partition-param", type=float, default=None)
        parser.add_argument("--seed", type=int, default=1, help="the partition's seed")
        parser.add_argument("--data-seed", type=int, default=0)
        parser.add_argument("--format", choices=["npz", "csv"], default="npz")
        parser.add_argument(
            "--data-dir", default="data", help="the folder in the work dir (the job's phone_data_dir)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            params = json.loads(options["dataset_params"])
            config = parse_job_config(
                {
                    "dataset": options["dataset"],
                    "dataset_params": params,
                    "data_seed": options["data_seed"],
                    "partition": options["partition"],
                    "partition_param": options["partition_param"],
                    "seed": options["seed"],
                    "phone_data_dir": options["data_dir"],
                }
            )
        except json.JSONDecodeError as exc:
            raise CommandError(f"--dataset-params is not JSON: {exc}", returncode=EXIT_INVALID) from None
        except JobConfigError as exc:
            lines = "\n".join(f"  {field}: {message}" for field, message in exc.errors.items())
            raise CommandError(f"invalid:\n{lines}", returncode=EXIT_INVALID) from None
        if options["phones"] < 1:
            raise CommandError("--phones must be at least 1", returncode=EXIT_INVALID)
        splits = load_job_dataset(config)
        name = PARTITION_PARAM_NAMES.get(config.partition)
        extra: dict[str, Any] = {}
        if name and config.partition_param is not None:
            extra[name] = (
                int(config.partition_param) if name == "shards_per_client" else config.partition_param
            )
        try:
            parts = partition_dataset(
                config.partition, splits.train, options["phones"], seed=config.seed, **extra
            )
        except ValueError as exc:
            raise CommandError(str(exc), returncode=EXIT_INVALID) from None
        sizes = write_seed_files(
            splits.train.x.numpy(),
            splits.train.y.numpy(),
            parts,
            options["out"],
            data_dir=config.phone_data_dir,
            fmt=options["format"],
        )
        self.stdout.write(json.dumps({"out": str(options["out"]), "samples": sizes}))
