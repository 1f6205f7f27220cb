"""docker-compose.yml cannot run here (no Docker engine), so it is validated by reading: every service
that runs our image must run a command that exists in this project, with options it accepts."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands, load_command_class

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
APP_SERVICES = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}


def test_compose_has_the_designed_services() -> None:
    expected = {"redis", "postgres", "web", "worker-devices", "worker-training", "beat", "virtual-lab"}
    assert expected <= set(COMPOSE["services"])
    for name in ("redis", "postgres", "web", "worker-devices", "worker-training", "virtual-lab"):
        assert "healthcheck" in COMPOSE["services"][name], name


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_command_exists_in_project(name: str) -> None:
    argv = [str(a) for a in APP_SERVICES[name]["command"]]
    program = argv[0]
    if program == "python":
        assert argv[1] == "manage.py"
        command = argv[2]
        commands = get_commands()
        assert command in commands, f"{name}: no management command {command!r}"
        parser = load_command_class(commands[command], command).create_parser("manage.py", command)
        parser.parse_args(argv[3:])  # raises SystemExit on an unknown option
    elif program == "daphne":
        module, _, attr = argv[-1].partition(":")
        assert hasattr(importlib.import_module(module), attr)
    elif program == "celery":
        app_module = argv[argv.index("-A") + 1]
        app = importlib.import_module(app_module).celery_app
        sub = argv[argv.index("-A") + 2]
        assert sub in {"worker", "beat"}
        if "-Q" in argv:
            queue = argv[argv.index("-Q") + 1]
            declared = {q.name for q in app.conf.task_queues}
            assert queue in declared, f"{name}: queue {queue!r} not declared in config/celery.py"
    else:
        pytest.fail(f"{name}: unexpected program {program!r}")


def test_dockerfile_exists_and_installs_requirements() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile
