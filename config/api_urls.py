"""The REST API under /api/ (namespace `api`): devices here, other apps' `api.urlpatterns` appended.

DRF authenticates API requests itself (token or session) and IsAuthenticated is its default
permission, so these views are exempt from the login-redirect middleware: an API client gets 401/403
JSON, never a redirect to the login page.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from django.contrib.auth.decorators import login_not_required
from rest_framework.routers import SimpleRouter

from devices.api import DeviceViewSet

app_name = "api"

router = SimpleRouter()
router.register("devices", DeviceViewSet, basename="device")


def _open_to_drf_auth(patterns: list[Any]) -> list[Any]:
    for pattern in patterns:
        pattern.callback = login_not_required(pattern.callback)
    return patterns


urlpatterns = _open_to_drf_auth(list(router.urls))
# Other apps contribute plain `urlpatterns` in <app>/api.py (also marked login_not_required there).
for _module in ("training.web.api",):
    if importlib.util.find_spec(_module) is not None:
        urlpatterns += importlib.import_module(_module).urlpatterns
