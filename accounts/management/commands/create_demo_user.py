"""`manage.py create_demo_user`: create (or reset) an operator account for the demo and print its login.

Idempotent: run again, the same user gets the given password (or a new random one) and stays an operator.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts.roles import OPERATORS, ensure_role_groups


class Command(BaseCommand):
    help = "Create or update an operator account (default 'demo') and print its username and password."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument(
            "--password", help="password to set; a random one is generated and printed if omitted"
        )
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        password: str = options["password"] or secrets.token_urlsafe(12)
        with transaction.atomic():
            ensure_role_groups()
            user, created = get_user_model().objects.get_or_create(
                username=username, defaults={"email": options["email"]}
            )
            user.set_password(password)
            user.is_active = True
            user.save()
            user.groups.add(Group.objects.get(name=OPERATORS))
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} operator: username={username} password={password}")
