"""`make demo`: one command from a fresh checkout to a working lab at http://127.0.0.1:8000.

Steps: migrate, create the demo operator, start Redis on loopback (unless REDIS_URL is set), then run
Daphne, both Celery workers, beat and a 20-phone virtual lab (a mix of stock phones in app mode, resident
and exec phones, varied batteries, a few phones on an on/off availability model: demo_profiles) under
config/supervisor.py: a process that
exits is started again (after a backoff, with a restart counter, and the log says so) while the others go
on; Ctrl-C stops everything. The banner with the URL and the login is printed once the web server answers.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config.local_redis import LocalRedis, answers_ping, redis_server_argv, start_local_redis  # noqa: E402
from config.ports import port_is_free  # noqa: E402
from config.supervisor import Program, Supervisor, install_stop_signals  # noqa: E402

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


def announce_when_up(password: str, say: Callable[[str], None]) -> None:
    url = f"http://127.0.0.1:{WEB_PORT}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "accounts/login/", timeout=2)  # noqa: S310 - fixed loopback URL
            break
        except OSError:
            time.sleep(0.5)
    bar = "=" * 64
    say(
        f"{bar}\n  FedFleet lab is up:  {url}\n  login: demo   password: {password}\n"
        f"  {PHONES} virtual phones are registering in the fleet.  Ctrl-C stops everything.\n{bar}"
    )


# The demo lab mixes what a real lab holds, so a newcomer sees every runtime and a fleet that changes:
# stock phones whose agent runs in their Termux-like app (app runtime), phones the platform keeps a
# resident agent on, phones whose shell runs the agent each round (exec); batteries from nearly flat to
# full, some on a charger; a few phones that come and go (an on/off Markov availability model).
DEMO_STOCK = 4  # the first phones: stock builds with Termux (registered in app mode)
DEMO_RESIDENT = 4  # the next ones: registered with the resident runtime (virtual_lab --resident)
DEMO_ON_OFF = (14, 17, 19)  # exec phones that come and go
DEMO_BATTERY = (92, 64, 38, 100, 81, 55, 17, 73, 96, 44, 68, 29, 88, 51, 77, 23, 99, 60, 35, 84)


def demo_profiles(path: Path, phones: int) -> Path:
    """Write the demo lab's profiles (devices/virtual/profile.py's JSON format) and return the path."""
    import json  # noqa: PLC0415

    from devices.virtual.profile import CATALOGUE  # noqa: PLC0415

    entries = []
    for index in range(phones):
        entry = dict(CATALOGUE[index % len(CATALOGUE)])
        level = DEMO_BATTERY[index % len(DEMO_BATTERY)]
        entry["battery"] = {"level": float(level), "plugged": level < 30 or index % 5 == 0}
        if index < DEMO_STOCK:
            entry.update(stock=True, termux={"installed": True})
        if index in DEMO_ON_OFF:
            entry["availability"] = {"kind": "markov", "mean_on_s": 150.0, "mean_off_s": 40.0}
        entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"phones": entries}, indent=1))
    return path


def demo_agent_pyz() -> Path:
    """The platform's agent, as a person would copy it to each stock phone for Termux (the workers build
    the same bytes under the data dir; the stream runtimes upgrade a phone that holds another build)."""
    from training.agent.build import build_agent_pyz  # noqa: PLC0415

    return build_agent_pyz(DATA_DIR / "demo-agent").path


def lab_programs(env: dict[str, str], redis: LocalRedis | None) -> list[Program]:
    """What the lab runs, in start order: Redis first (when the demo runs its own), web, workers, beat, lab."""
    bin_dir = Path(PY).parent
    commands = {
        "web": f"{bin_dir}/daphne -b 127.0.0.1 -p {WEB_PORT} config.asgi:application",
        "devices": f"{bin_dir}/celery -A config worker -Q devices -P threads -c 32 -n devices@%h -l INFO",
        "training": f"{bin_dir}/celery -A config worker -Q training -P prefork -c 2 -n training@%h -l INFO",
        "beat": f"{bin_dir}/celery -A config beat -l INFO -s {DATA_DIR}/celerybeat-schedule",
        "lab": f"{PY} manage.py virtual_lab --phones {PHONES} --seed 1 --warm-zygote --register"
        f" --profiles {shlex.quote(str(demo_profiles(DATA_DIR / 'demo-profiles.json', PHONES)))}"
        f" --agent-pyz {shlex.quote(str(demo_agent_pyz()))} --resident {DEMO_RESIDENT}",
    }
    programs = [Program(name, tuple(shlex.split(cmd)), env=env, cwd=REPO) for name, cmd in commands.items()]
    if redis is not None:
        # Restarted on the same port and data dir: it comes back with its queues (append-only file).
        port = redis.port
        argv = tuple(redis_server_argv(redis.data_dir, port))
        programs.insert(0, Program("redis", argv, ready=lambda: answers_ping(port), stop_last=True))
    return programs


def main() -> int:
    env = dict(os.environ, FEDFLEET_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1")
    env.setdefault("DJANGO_DEBUG", "1")
    if not port_is_free(WEB_PORT):
        print(f"port {WEB_PORT} is in use: stop what runs there or set FEDFLEET_WEB_PORT", file=sys.stderr)
        return 1

    redis = None
    if "REDIS_URL" not in env:
        port = 6379 if port_is_free(6379) else None
        redis = start_local_redis(DATA_DIR / "redis", port, new_session=True)
        env["REDIS_URL"] = redis.url
        print(f"redis-server on {redis.url}", flush=True)

    try:
        password = demo_password()
        manage("migrate", "--noinput", env=env)
        manage("create_demo_user", "--username", "demo", "--password", password, env=env)
    except BaseException:  # a failed migration or Ctrl-C: the Redis in its own session would stay
        if redis is not None:
            redis.stop()
        raise

    supervisor = Supervisor(lab_programs(env, redis))
    install_stop_signals(supervisor)
    threading.Thread(target=announce_when_up, args=(password, supervisor.say), daemon=True).start()
    # The Redis started above is the supervisor's first instance of "redis".
    return supervisor.run(adopted={"redis": redis.process} if redis is not None else None)


if __name__ == "__main__":
    sys.exit(main())
