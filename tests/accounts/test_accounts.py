"""Roles, login/logout, the login-by-default middleware and the demo user command."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.http import HttpRequest
from django.urls import reverse

from accounts.roles import OPERATE_PERMISSION, OPERATORS, VIEWERS, is_operator, role_of

pytestmark = pytest.mark.django_db


def test_migration_created_both_groups_with_permissions() -> None:
    operators = set(Group.objects.get(name=OPERATORS).permissions.values_list("codename", flat=True))
    viewers = set(Group.objects.get(name=VIEWERS).permissions.values_list("codename", flat=True))
    assert {"operate_lab", "add_device", "change_device", "delete_device", "view_device"} <= operators
    assert viewers == {"view_device"}


def test_roles(operator_user: Any, viewer_user: Any) -> None:
    assert is_operator(operator_user) and operator_user.has_perm(OPERATE_PERMISSION)
    assert not is_operator(viewer_user)
    assert role_of(operator_user) == "Operator" and role_of(viewer_user) == "Viewer"
    admin = get_user_model().objects.create_superuser("root", password="x-not-used-1")
    assert role_of(admin) == "Admin" and is_operator(admin)


def test_login_and_logout(client: Any, viewer_user: Any) -> None:
    page = client.get(reverse("accounts:login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    bad = client.post(reverse("accounts:login"), {"username": "vera", "password": "wrong"})
    assert bad.status_code == 200 and b"errorlist" in bad.content
    good = client.post(reverse("accounts:login"), {"username": "vera", "password": "pw-for-tests-1"})
    assert good.status_code == 302 and good.url == reverse("devices:fleet")
    assert client.get(reverse("devices:fleet")).status_code == 200
    assert client.get(reverse("accounts:logout")).status_code == 405  # logout is a POST (CSRF-protected)
    assert client.post(reverse("accounts:logout")).status_code == 302
    assert client.get(reverse("devices:fleet")).status_code == 302


def test_login_redirect_keeps_next(client: Any) -> None:
    response = client.get("/devices/adb-key/")
    assert response.url == f"{reverse('accounts:login')}?next=/devices/adb-key/"


def test_admin_requires_staff(viewer_client: Any) -> None:
    assert viewer_client.get("/admin/").status_code == 302


def test_create_demo_user_creates_then_resets(client: Any) -> None:
    out = StringIO()
    call_command("create_demo_user", "--password", "first-pass-123", stdout=out)
    assert "Created operator: username=demo password=first-pass-123" in out.getvalue()
    call_command("create_demo_user", "--password", "second-pass-456", stdout=out)
    assert "Updated operator" in out.getvalue()
    demo = get_user_model().objects.get(username="demo")
    assert is_operator(demo) and demo.check_password("second-pass-456")
    generated = StringIO()
    call_command("create_demo_user", stdout=generated)
    password = generated.getvalue().strip().rsplit("password=", 1)[1]
    # Axes (login throttling) needs the request passed to authenticate(), as the real login view does.
    assert len(password) >= 12 and client.login(request=HttpRequest(), username="demo", password=password)


def test_groups_survive_a_flush(transactional_db: None) -> None:
    call_command("flush", "--noinput", verbosity=0)
    assert set(Group.objects.values_list("name", flat=True)) >= {OPERATORS, VIEWERS}
