"""Data migration: the Operators and Viewers groups with their permissions (see accounts.roles)."""

from django.db import migrations


def create_role_groups(apps, schema_editor):
    from accounts.roles import ensure_role_groups

    ensure_role_groups(apps)


def remove_role_groups(apps, schema_editor):
    from accounts.roles import OPERATORS, VIEWERS

    apps.get_model("auth", "Group").objects.filter(name__in=[OPERATORS, VIEWERS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("devices", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_role_groups, remove_role_groups)]
