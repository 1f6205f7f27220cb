"""`manage.py import_dataset PATH --owner USER [--name N] [--format leaf|npz|csv] [--feature-shape 1,28,28]
[--num-classes K] [--label-column C] [--client-column C]`: a data set named by a path on the server.

The same checks as an upload (training/jobs/datasets.py: a copy under the data dir is read in full, and
kept only when it passes); a refused file prints one line per problem and exits 2. Prints the stored data
set's id and summary as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.fl.data_formats import DataFormatError
from training.jobs import datasets

EXIT_INVALID = 2


class Command(BaseCommand):
    help = "Check a data file (LEAF JSON, NPZ, CSV) and store it as a data set jobs can use"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--owner", required=True, help="the user the data set belongs to")
        parser.add_argument("--name", default="")
        parser.add_argument("--format", default="", choices=["", "leaf", "npz", "csv"])
        parser.add_argument("--feature-shape", default="", help="e.g. 1,28,28")
        parser.add_argument("--num-classes", type=int, default=0)
        parser.add_argument("--label-column", default="")
        parser.add_argument("--client-column", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = get_user_model().objects.filter(username=options["owner"]).first()
        if owner is None:
            raise CommandError(f"no user {options['owner']!r}", returncode=EXIT_INVALID)
        shape_text = options["feature_shape"].strip()
        try:
            shape = [int(part) for part in shape_text.split(",")] if shape_text else None
        except ValueError:
            raise CommandError(
                "--feature-shape: whole numbers separated by commas", returncode=EXIT_INVALID
            ) from None
        read = {
            "format": options["format"],
            "feature_shape": shape,
            "num_classes": options["num_classes"] or None,
            "label_column": options["label_column"],
            "client_column": options["client_column"],
        }
        try:
            dataset = datasets.ingest_path(owner, options["path"], name=options["name"], options=read)
        except DataFormatError as exc:
            raise CommandError(
                "refused, nothing stored:\n" + "\n".join(f"  {p}" for p in exc.problems),
                returncode=EXIT_INVALID,
            ) from None
        self.stdout.write(json.dumps({"id": dataset.pk, "name": dataset.name, "summary": dataset.summary}))
