"""Forms for registering/editing a phone and for the "test connection" check.

DeviceForm is the single validation path for a phone's settings: the register and edit pages use it,
and the REST API runs its input through it too (devices.serializers), so both give the same errors.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from devices.addresses import AddressError, normalise_address
from devices.models import (
    DEFAULT_AGENT_PORT,
    DEFAULT_AGENT_PYTHON,
    DEFAULT_WORK_DIR,
    Device,
    DeviceStatus,
    Runtime,
    Transport,
)
from devices.services import DeviceSettings, normalise_tags
from devices.validators import (
    normalise_work_dir,
    validate_agent_python,
    validate_agent_secret,
    validate_worker_queue,
)


def _clean_address(transport: str | None, raw: str | None) -> str:
    if not transport or raw is None:
        raise ValidationError("Enter an address.")
    try:
        return normalise_address(transport, raw)
    except AddressError as exc:
        raise ValidationError(str(exc)) from exc


class DeviceForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="A short unique name, e.g. pixel-7-lab-a.")
    transport = forms.ChoiceField(choices=Transport.choices, initial=Transport.TCP)
    address = forms.CharField(
        max_length=255,
        help_text="host:port for TCP (adb tcpip), e.g. 192.168.1.20:5555; the serial for USB.",
    )
    tags = forms.CharField(required=False, max_length=400, help_text="Comma-separated, e.g. lab-a, rooted.")
    agent_python = forms.CharField(
        max_length=200,
        initial=DEFAULT_AGENT_PYTHON,
        validators=[validate_agent_python],
        help_text="How Python is run on the phone (see the README's agent runtime modes).",
    )
    work_dir = forms.CharField(
        max_length=200, initial=DEFAULT_WORK_DIR, help_text="Absolute path on the phone."
    )
    worker_queue = forms.CharField(
        max_length=100,
        required=False,
        validators=[validate_worker_queue],
        help_text="Leave blank unless the phone is plugged into another host (devices.<host>).",
    )
    # Not required: a form (or API call) that does not name them gets the defaults (exec, port 7000).
    runtime = forms.ChoiceField(
        choices=Runtime.choices,
        initial=Runtime.EXEC,
        required=False,
        help_text="exec: the shell runs Python (rooted phones, boards, virtual phones); resident: the "
        "platform keeps agent serve running through the shell; app: stock phones, agent serve in Termux.",
    )
    agent_port = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=65535,
        initial=DEFAULT_AGENT_PORT,
        help_text="The phone's loopback port for agent serve (resident and app).",
    )
    agent_secret = forms.CharField(
        required=False,
        max_length=256,
        validators=[validate_agent_secret],
        help_text="Leave blank to keep this phone's secret (a new phone gets a generated one).",
    )

    def __init__(self, *args: Any, instance: Device | None = None, **kwargs: Any) -> None:
        self.instance = instance
        if instance is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                "name": instance.name,
                "transport": instance.transport,
                "address": instance.address,
                "tags": ", ".join(tag.name for tag in instance.tags.all()),
                "agent_python": instance.agent_python,
                "work_dir": instance.work_dir,
                "worker_queue": instance.worker_queue,
                "runtime": instance.runtime,
                "agent_port": instance.agent_port,
            }
        super().__init__(*args, **kwargs)

    # A new registration at the address of a retired phone brings that phone back (services.create_device).
    reviving: Device | None = None

    def _others(self) -> Any:
        others = Device.objects.all()
        for kept in (self.instance, self.reviving):
            if kept is not None:
                others = others.exclude(pk=kept.pk)
        return others

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Enter a name.")
        return name  # uniqueness in clean(), once the address says whether a retired phone comes back

    def clean_tags(self) -> list[str]:
        return normalise_tags(self.cleaned_data.get("tags", "").split(","))

    def clean_agent_python(self) -> str:
        return " ".join(self.cleaned_data["agent_python"].split())

    def clean_work_dir(self) -> str:
        return normalise_work_dir(self.cleaned_data["work_dir"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "address" in cleaned:
            try:
                address = _clean_address(cleaned.get("transport"), cleaned["address"])
            except ValidationError as exc:
                self.add_error("address", exc)
            else:
                cleaned["address"] = address
                if self.instance is None:
                    self.reviving = Device.objects.filter(
                        address=address, status=DeviceStatus.RETIRED
                    ).first()
                duplicate = self._others().filter(address=address).first()
                if duplicate is not None:
                    self.add_error("address", f"{address} is already registered as {duplicate.name!r}.")
        name = cleaned.get("name")
        if name and self._others().filter(name=name).exists():
            self.add_error("name", f"A phone named {name!r} is already registered.")
        return cleaned

    def device_settings(self) -> DeviceSettings:
        data = self.cleaned_data
        return DeviceSettings(
            name=data["name"],
            transport=data["transport"],
            address=data["address"],
            tags=tuple(data["tags"]),
            agent_python=data["agent_python"],
            work_dir=data["work_dir"],
            worker_queue=data.get("worker_queue", ""),
            runtime=data.get("runtime") or Runtime.EXEC,
            agent_port=data.get("agent_port") or DEFAULT_AGENT_PORT,
            agent_secret=data.get("agent_secret", ""),
        )


class ConnectionTestForm(forms.Form):
    transport = forms.ChoiceField(choices=Transport.choices)
    address = forms.CharField(max_length=255)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "address" in cleaned:
            try:
                cleaned["address"] = _clean_address(cleaned.get("transport"), cleaned["address"])
            except ValidationError as exc:
                self.add_error("address", exc)
        return cleaned
