"""Extension points of the device pages, so other apps can add to them without `devices` importing them.

`devices` never imports `training` (DESIGN.md: dependencies point one way). Yet a phone's page should show
what the phone did in federated jobs. So the device page asks a registry for *panels*: each registered
provider gets the Device and returns a `DevicePanel` (or None to show nothing for this phone), and the page
renders, in registration order, one card per panel: the title as its heading, then the panel's template,
which sees the panel's context as `panel` (and the page's own context, e.g. `device`).

Register from your AppConfig.ready(), which runs once per process after every app is loaded:

    from devices.extensions import DevicePanel, register_device_panel

    def participation_panel(device):
        return DevicePanel("Federated jobs", "training/_device_participation.html", {"rows": ...})

    register_device_panel(participation_panel)

Rules for providers: be quick (a few queries; the page waits for you), return JSON-ready context if the
template passes it to `json_script`, and never write. A provider that raises is logged and its panel is
replaced by a short error note, so one broken extension cannot take the device page down with it.
A figure in a panel is drawn by the device page's script if the template emits it with
`{{ figure|json_script:id }}` and a `<div class="chart" data-figure="id">` (static/js/device_detail.js).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from devices.models import Device

if TYPE_CHECKING:  # only a type here: the device page's extensions never pull in the ADB client
    from devices.adb import AdbConnection

log = logging.getLogger(__name__)

ERROR_TEMPLATE = "devices/_panel_error.html"


class DevicePanel(NamedTuple):
    """What one extension adds to a device page: a card titled `title`, rendered from `template`."""

    title: str
    template: str
    context: Mapping[str, Any]


DevicePanelProvider = Callable[[Device], DevicePanel | None]

# The registered providers, in registration order. Append through register_device_panel.
DEVICE_PANELS: list[DevicePanelProvider] = []


def register_device_panel(provider: DevicePanelProvider) -> DevicePanelProvider:
    """Add a provider once (ready() can run more than once in tests); usable as a decorator."""
    if provider not in DEVICE_PANELS:
        DEVICE_PANELS.append(provider)
    return provider


def unregister_device_panel(provider: DevicePanelProvider) -> None:
    if provider in DEVICE_PANELS:
        DEVICE_PANELS.remove(provider)


def panels_for(device: Device) -> list[DevicePanel]:
    """Every registered provider's panel for this phone, skipping those that return None."""
    panels = []
    for provider in list(DEVICE_PANELS):
        try:
            panel = provider(device)
        except Exception:  # noqa: BLE001 - an extension's bug must not break the device page
            name = getattr(provider, "__qualname__", repr(provider))
            log.exception("device panel %s failed for device %s", name, device.pk)
            panel = DevicePanel("Panel unavailable", ERROR_TEMPLATE, {"provider": name})
        if panel is not None:
            panels.append(panel)
    return panels


# --- agent checks: what a health probe asks a phone's resident agent --------------------------------
# A probe of a phone in the app runtime should say whether its agent is there and knows the phone's
# secret ("agent not running", "wrong agent secret"), but the agent's protocol belongs to training. A
# check gets the probe's open connection and the phone, and returns (status, reason) to record instead of
# "online", or None when the agent is fine. The training app registers its check in ready().
AgentCheck = Callable[["AdbConnection", Device], tuple[str, str] | None]
AGENT_CHECKS: list[AgentCheck] = []


def register_agent_check(check: AgentCheck) -> AgentCheck:
    if check not in AGENT_CHECKS:
        AGENT_CHECKS.append(check)
    return check


def unregister_agent_check(check: AgentCheck) -> None:
    if check in AGENT_CHECKS:
        AGENT_CHECKS.remove(check)


def check_agent(conn: AdbConnection, device: Device) -> tuple[str, str] | None:
    """The first registered check's verdict; a check that raises is logged and ignored (the phone's
    ADB answered, which is what the probe is about)."""
    for check in list(AGENT_CHECKS):
        try:
            verdict = check(conn, device)
        except Exception:  # noqa: BLE001 - an extension's bug must not fail the probe
            log.exception(
                "agent check %s failed for device %s", getattr(check, "__qualname__", check), device.pk
            )
            continue
        if verdict is not None:
            return verdict
    return None
