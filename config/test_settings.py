"""Settings for the pytest session: development defaults unless the environment says otherwise
(config/settings.py itself fails closed: DEBUG off, secret key required)."""

import os

os.environ.setdefault("DJANGO_DEBUG", "1")

from config.settings import *  # noqa: E402, F403
