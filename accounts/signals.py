"""Keep the role groups present after every migrate and every flush (tests flush between cases)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_migrate
from django.dispatch import receiver

from accounts.roles import ensure_role_groups


@receiver(post_migrate, dispatch_uid="accounts.ensure_role_groups")
def _ensure_role_groups(sender: Any, using: str = "default", **kwargs: Any) -> None:
    # post_migrate is sent per app *with models*; accounts has none, and the role permissions live on
    # devices.Device, so run once that app's permissions have been created (its signal comes after auth's).
    if getattr(sender, "label", "") != "devices":
        return
    ensure_role_groups()
