"""A staticfiles finder that serves plotly.js from the installed plotly package as vendor/plotly.min.js.

Why a finder rather than copying or committing the file: the 4.6 MB bundle stays out of git, there is no
build step to forget, and the browser always gets the plotly.js that matches the pinned Python package
(the figures are built by that package). `collectstatic` picks it up like any other static file, and
WhiteNoise (WHITENOISE_USE_FINDERS) serves it without collectstatic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "vendor/plotly.min.js"


def plotly_bundle_path() -> Path:
    import plotly  # noqa: PLC0415 - imported lazily: only the finder needs it

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class _PrefixedStorage(FileSystemStorage):
    prefix = "vendor"


class PlotlyJsFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bundle = plotly_bundle_path()

    def check(self, **kwargs: Any) -> list[Error]:
        if not self.bundle.is_file():
            return [Error(f"plotly.min.js not found at {self.bundle}", id="fedfleet.E001")]
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        if path == PLOTLY_STATIC_PATH and self.bundle.is_file():
            return [str(self.bundle)] if find_all else str(self.bundle)
        return []  # Django's finders return an empty list for "not here", in both modes

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        if self.bundle.is_file():
            storage = _PrefixedStorage(location=str(self.bundle.parent))
            yield self.bundle.name, storage
