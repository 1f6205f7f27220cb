"""The two roles, as Django groups. Viewers watch; Operators register phones and launch jobs.

One custom permission, `devices.operate_lab`, is the operator's key for every write in the platform
(phones and, later, jobs), so views and the API check a single thing. The groups are created by a data
migration and kept in shape after every `migrate` (and every test-database flush) by a post_migrate hook.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

OPERATORS = "Operators"
VIEWERS = "Viewers"
OPERATE_PERMISSION = "devices.operate_lab"

# group -> (app_label, model, codename, human name); created if missing so the migration needs no signal.
ROLE_PERMISSIONS: dict[str, list[tuple[str, str, str, str]]] = {
    OPERATORS: [
        ("devices", "device", "operate_lab", "Can operate the lab (register phones, launch jobs)"),
        ("devices", "device", "add_device", "Can add device"),
        ("devices", "device", "change_device", "Can change device"),
        ("devices", "device", "delete_device", "Can delete device"),
        ("devices", "device", "view_device", "Can view device"),
    ],
    VIEWERS: [
        ("devices", "device", "view_device", "Can view device"),
    ],
}


def is_operator(user: Any) -> bool:
    return bool(user.is_authenticated and user.has_perm(OPERATE_PERMISSION))


def role_of(user: Any) -> str:
    """A label for the navigation bar: Admin, Operator, Viewer (or "" when logged out)."""
    if not user.is_authenticated:
        return ""
    if user.is_superuser:
        return "Admin"
    return "Operator" if is_operator(user) else "Viewer"


def ensure_role_groups(apps: Any = global_apps) -> None:
    """Create both groups and give them their permissions; idempotent. `apps` may be a migration's."""
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    content_type_model = apps.get_model("contenttypes", "ContentType")
    for group_name, permissions in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        for app_label, model, codename, name in permissions:
            content_type, _ = content_type_model.objects.get_or_create(app_label=app_label, model=model)
            permission, _ = permission_model.objects.get_or_create(
                content_type=content_type, codename=codename, defaults={"name": name}
            )
            group.permissions.add(permission)
