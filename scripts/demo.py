"""`make demo`: one command from a fresh checkout to a working lab at http://127.0.0.1:8000.

Steps: migrate, create the demo operator, start Redis on loopback (unless REDIS_URL is set), then run
Daphne, both Celery workers, beat and a 20-phone virtual lab under honcho, which stops them all on Ctrl-C.
The banner with the URL and the login is printed once the web server answers.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config.local_redis import start_local_redis  # noqa: E402
from config.ports import port_is_free  # noqa: E402

WEB_PORT = int(os.environ.get("FEDFLEET_WEB_PORT", "8000"))
PHONES = int(os.environ.get("FEDFLEET_DEMO_PHONES", "20"))
DATA_DIR = Path(os.environ.get("FEDFLEET_DATA_DIR", REPO / "var"))
PY = sys.executable


def demo_password() -> str:
    """A random password made on first run and kept (0600) under the data dir, so it stays the same."""
    path = DATA_DIR / "demo-password"
    if path.exists():
        return path.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(9)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=REPO, env=env, check=True)


def announce_when_up(password: str) -> None:
    url = f"http://127.0.0.1:{WEB_PORT}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "accounts/login/", timeout=2)  # noqa: S310 - fixed loopback URL
            break
        except OSError:
            time.sleep(0.5)
    bar = "=" * 64
    print(
        f"\n{bar}\n  FedFleet lab is up:  {url}\n  login: demo   password: {password}\n"
        f"  {PHONES} virtual phones are registering in the fleet.  Ctrl-C stops everything.\n{bar}\n",
        flush=True,
    )


def main() -> int:
    from honcho.manager import Manager

    env = dict(os.environ, FEDFLEET_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1")
    env.setdefault("DJANGO_DEBUG", "1")
    if not port_is_free(WEB_PORT):
        print(f"port {WEB_PORT} is in use: stop what runs there or set FEDFLEET_WEB_PORT", file=sys.stderr)
        return 1

    redis = None
    if "REDIS_URL" not in env:
        redis = start_local_redis(DATA_DIR / "redis", 6379 if port_is_free(6379) else None)
        env["REDIS_URL"] = redis.url
        print(f"redis-server on {redis.url}", flush=True)

    password = demo_password()
    manage("migrate", "--noinput", env=env)
    manage("create_demo_user", "--username", "demo", "--password", password, env=env)

    bin_dir = Path(PY).parent
    manager = Manager()
    procs = {
        "web": f"{bin_dir}/daphne -b 127.0.0.1 -p {WEB_PORT} config.asgi:application",
        "devices": f"{bin_dir}/celery -A config worker -Q devices -P threads -c 32 -n devices@%h -l INFO",
        "training": f"{bin_dir}/celery -A config worker -Q training -P prefork -c 2 -n training@%h -l INFO",
        "beat": f"{bin_dir}/celery -A config beat -l INFO -s {DATA_DIR}/celerybeat-schedule",
        "lab": f"{PY} manage.py virtual_lab --phones {PHONES} --seed 1 --warm-zygote --register",
    }
    for name, cmd in procs.items():
        manager.add_process(name, cmd, env=env, cwd=str(REPO))
    threading.Thread(target=announce_when_up, args=(password,), daemon=True).start()
    try:
        manager.loop()
    finally:
        if redis is not None:
            redis.stop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
