"""Top-level URLs. Apps own their own urls modules; the training app is included once it has one."""

from __future__ import annotations

import importlib.util

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="devices:fleet", permanent=False), name="home"),
    path("accounts/", include("accounts.urls")),
    path("devices/", include("devices.urls")),
    path("api/", include("config.api_urls")),
    path("admin/", admin.site.urls),
]

if importlib.util.find_spec("training.web.urls") is not None:
    urlpatterns.append(path("jobs/", include("training.web.urls")))
