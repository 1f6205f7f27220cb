"""The demo lab mixes runtimes, batteries and availability (scripts/demo.py), and `virtual_lab --register`
registers what it hosts accordingly: stock phones in app mode with their app's port and secret, K
shell-capable phones as resident, the rest exec."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from devices.management.commands.virtual_lab import Command
from devices.models import Device
from devices.virtual.lab import PhoneEndpoint
from devices.virtual.profile import load_profiles

REPO = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedfleet_demo_mix", REPO / "scripts" / "demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_profiles_mix_stock_phones_batteries_and_availability(tmp_path: Path) -> None:
    demo = load_demo()
    profiles = load_profiles(demo.demo_profiles(tmp_path / "p.json", 20), 20)
    stock = [p for p in profiles if p.stock]
    assert len(stock) == demo.DEMO_STOCK and all(p.termux.installed for p in stock)
    assert len({p.battery.level for p in profiles}) >= 15  # not every phone at 79 % any more
    assert any(p.battery.plugged for p in profiles) and not all(p.battery.plugged for p in profiles)
    on_off = [i for i, p in enumerate(profiles) if p.availability.kind == "markov"]
    assert on_off == list(demo.DEMO_ON_OFF) and not any(profiles[i].stock for i in on_off)


@pytest.mark.django_db
def test_register_maps_stock_phones_to_app_mode_and_k_phones_to_resident(tmp_path: Path) -> None:
    endpoints = [
        PhoneEndpoint("s1", "127.0.0.1", 21001, "SM-A525F", tmp_path, 7001, "stock-secret-0123456789", True),
        PhoneEndpoint("p1", "127.0.0.1", 21002, "Pixel 7", tmp_path),
        PhoneEndpoint("p2", "127.0.0.1", 21003, "Pixel 7", tmp_path),
        PhoneEndpoint("p3", "127.0.0.1", 21004, "Pixel 7", tmp_path),
    ]
    command = Command()
    command.advertise_host, command.resident = "", 2
    command._register(endpoints)
    rows = {d.name: d for d in Device.objects.all()}
    assert (rows["s1"].runtime, rows["s1"].agent_port, rows["s1"].agent_secret) == (
        "app",
        7001,
        "stock-secret-0123456789",
    )
    assert rows["s1"].work_dir == "/sdcard/fedfleet/"
    assert [rows[n].runtime for n in ("p1", "p2", "p3")] == ["resident", "resident", "exec"]
    assert rows["p1"].agent_secret != rows["p2"].agent_secret
    # Registering again keeps each phone's secret (the resident agent on it knows that one).
    secret = rows["p1"].agent_secret
    command._register(endpoints)
    assert Device.objects.get(name="p1").agent_secret == secret
