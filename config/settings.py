"""FedFleet settings: everything that differs between machines comes from the environment (config/env.py).

Variables (all optional for development; a deployment sets DJANGO_DEBUG=0 and DJANGO_SECRET_KEY):
  DJANGO_DEBUG            1/0, default 0 (fail closed); `make` targets and the test session set 1
  DJANGO_SECRET_KEY       required when DEBUG is off; in DEBUG a key is generated once under the data dir
  DJANGO_ALLOWED_HOSTS    comma-separated, default localhost,127.0.0.1,[::1] (+ testserver in DEBUG)
  DJANGO_CSRF_TRUSTED_ORIGINS  comma-separated origins (scheme://host:port) behind a proxy
  FEDFLEET_DATA_DIR       default <repo>/var: SQLite DB, ADB key, dev secret key, checkpoints (made 0700)
  FEDFLEET_HTTPS          1/0, default 1 when DEBUG is off: HTTPS redirect, HSTS, secure cookies
  FEDFLEET_HSTS_SECONDS   default 31536000 (one year) with HTTPS; 0 sends no HSTS header
  FEDFLEET_HSTS_INCLUDE_SUBDOMAINS / FEDFLEET_HSTS_PRELOAD  default 1 / 0
  FEDFLEET_PROXY_COUNT    reverse proxies in front of the web server, default 0: >0 trusts their
                          X-Forwarded-Proto (HTTPS) and X-Forwarded-For (login throttling's client IP)
  FEDFLEET_LOGIN_FAILURE_LIMIT   wrong passwords in a row before an account+IP is locked out, default 5
  FEDFLEET_LOGIN_LOCKOUT_MINUTES how long the lockout lasts, default 15
  DATABASE_URL            e.g. postgres://user:pass@host:5432/db; unset = SQLite (WAL) in the data dir
  REDIS_URL               default redis://127.0.0.1:6379/0: Celery broker + results, channel layer
  FEDFLEET_PROBE_INTERVAL_S          health-poll period, default 10
  FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S  at most one stored telemetry sample per phone per period, default 60
  FEDFLEET_TELEMETRY_RETENTION_DAYS  default 7
  FEDFLEET_LOG_LEVEL      default INFO
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.celery import PROBE_INTERVAL_S
from config.dev_secret import load_or_create_dev_secret_key
from config.env import env_bool, env_int, env_list, env_optional_str, env_path, env_str
from config.private_files import ensure_private_dir, ensure_private_file

BASE_DIR = Path(__file__).resolve().parent.parent

# --- core -----------------------------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
FEDFLEET_DATA_DIR = ensure_private_dir(env_path("FEDFLEET_DATA_DIR", BASE_DIR / "var"))

_secret_key = env_optional_str("DJANGO_SECRET_KEY")
if _secret_key is None:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    _secret_key = load_or_create_dev_secret_key(FEDFLEET_DATA_DIR / "dev-secret-key")
SECRET_KEY = _secret_key

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", *(["testserver"] if DEBUG else [])]
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves ASGI (websockets) in development
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "axes",  # login throttling (accounts/throttling.py)
    "accounts",
    "devices",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files answered before auth is consulted
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Login is the default for every view; only views marked login_not_required (login page, the API,
    # which authenticates by token or session itself) are open.
    "accounts.middleware.LoginRequiredByDefaultMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as Axes asks: turns a request its backend or token check locked out into a 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.role",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------------------------
# SQLite with several Celery writers needs WAL, a busy timeout and BEGIN IMMEDIATE (Django >= 5.1), or
# concurrent writers fail with "database is locked" instead of waiting their turn.
SQLITE_OPTIONS: dict[str, Any] = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def _database_from_env() -> dict[str, Any]:
    url = env_optional_str("DATABASE_URL")
    if url is None:
        db: dict[str, Any] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": FEDFLEET_DATA_DIR / "db.sqlite3",
        }
    else:
        db = dict(dj_database_url.parse(url, conn_max_age=0, conn_health_checks=True))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db["OPTIONS"] = {**SQLITE_OPTIONS, **db.get("OPTIONS", {})}
        name = str(db["NAME"])
        if name != ":memory:" and not name.startswith("file:"):
            ensure_private_file(Path(name))  # 0600 before SQLite creates it (and its -wal, -shm) 0644
    return db


DATABASES = {"default": _database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth -------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Axes first: it refuses a locked-out account+address before any password is checked. It needs the request
# passed to authenticate(): the login views and DRF do that; tests use client.login(request=HttpRequest(), ...)
# or force_login().
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "devices:fleet"
LOGOUT_REDIRECT_URL = "accounts:login"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- HTTPS ------------------------------------------------------------------------------------------------
# A deployment (DEBUG off) speaks HTTPS unless told otherwise: `manage.py check --deploy` passes with the
# defaults. FEDFLEET_HTTPS=0 is for a closed network or a local try-out (docker-compose on localhost).
HTTPS = env_bool("FEDFLEET_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("FEDFLEET_HSTS_SECONDS", 31_536_000, minimum=0) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("FEDFLEET_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("FEDFLEET_HSTS_PRELOAD", False)
# Preloading is the domain owner's call (leaving the browsers' list takes months), so it is off by default
# and its advisory check (W021: "cannot be submitted to the preload list without it") is silenced then.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Reverse proxies (TLS terminators) in front of Daphne: only then are their forwarding headers believed.
PROXY_COUNT = env_int("FEDFLEET_PROXY_COUNT", 0, minimum=0, maximum=5)
if PROXY_COUNT:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- login throttling (django-axes; accounts/throttling.py) ---------------------------------------------
AXES_FAILURE_LIMIT = env_int("FEDFLEET_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_int("FEDFLEET_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# Account and address together: a guesser is stopped on that account from that address, while the
# account's owner elsewhere, and other accounts from a shared address (a lab's NAT), still log in.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # "in a row": a successful login starts the count again
AXES_CLIENT_IP_CALLABLE = "accounts.throttling.client_ip"  # the socket's peer unless behind our proxies
AXES_LOCKOUT_CALLABLE = "accounts.throttling.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429

# --- i18n -------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("FEDFLEET_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- static files (WhiteNoise) --------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # vendor/plotly.min.js straight from the installed (pinned) plotly package: no CDN, no copy in git.
    "config.staticfiles.PlotlyJsFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the finders too, so Daphne serves static files with or without `collectstatic`.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Redis: Celery + Channels ---------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout None: redis-py 8 times out reads after 5 s by default, while channels_redis blocks
        # on reads while a websocket is idle, so every quiet dashboard was dropped every 5 s.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}

# --- Django REST framework --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header makes an anonymous API request a 401, not a 403.
        "accounts.authentication.ThrottledTokenAuthentication",  # counts wrong tokens like wrong passwords
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

# --- FedFleet ---------------------------------------------------------------------------------------------
FEDFLEET_PROBE_INTERVAL_S = PROBE_INTERVAL_S
FEDFLEET_PROBE_CONNECT_TIMEOUT_S = env_int("FEDFLEET_PROBE_CONNECT_TIMEOUT_S", 5, minimum=1)
FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S = env_int("FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S", 60, minimum=0)
FEDFLEET_TELEMETRY_RETENTION_DAYS = env_int("FEDFLEET_TELEMETRY_RETENTION_DAYS", 7, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("FEDFLEET_LOG_LEVEL", "INFO")},
    # axes: its lockout warnings stay, its start-up banner (INFO, in every process) goes.
    "loggers": {"daphne": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
