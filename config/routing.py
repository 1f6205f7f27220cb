"""Websocket routes, gathered from each app's `routing.websocket_urlpatterns`.

An app adds live pages by creating `<app>/routing.py` with a `websocket_urlpatterns` list and naming the
module here; a module that does not exist yet (training before its engine lands) is skipped, but one that
exists and fails to import raises, so a broken consumer never disappears silently.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import Any

WEBSOCKET_ROUTE_MODULES: tuple[str, ...] = ("devices.routing", "training.web.routing")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package itself is missing
        return False


def collect_websocket_urlpatterns(modules: Iterable[str] = WEBSOCKET_ROUTE_MODULES) -> list[Any]:
    patterns: list[Any] = []
    for name in modules:
        if not _module_exists(name):
            continue
        patterns.extend(importlib.import_module(name).websocket_urlpatterns)
    return patterns
