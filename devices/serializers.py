"""REST representation of a phone. Input is validated by devices.forms.DeviceForm, the same code the
register page runs, so scripts and people get the same rules and the same messages."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.roles import is_operator
from devices import services
from devices.forms import DeviceForm
from devices.models import Device, Transport


class DeviceSerializer(serializers.ModelSerializer):
    transport = serializers.ChoiceField(choices=Transport.choices, default=Transport.TCP)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, default=list, write_only=True
    )

    class Meta:
        model = Device
        fields = [
            "id",
            "name",
            "transport",
            "address",
            "tags",
            "agent_python",
            "work_dir",
            "worker_queue",
            "runtime",
            "agent_port",
            "agent_secret",
            "status",
            "status_reason",
            "status_changed_at",
            "last_seen_at",
            "manufacturer",
            "model",
            "android_release",
            "sdk_int",
            "abi",
            "battery_level",
            "charging",
            "battery_temperature_c",
            "ram_total_mb",
            "ram_available_mb",
            "cpu_cores",
            "telemetry_at",
            "lease_job_id",
            "created_at",
        ]
        read_only_fields = [
            name
            for name in fields
            if name
            not in {
                "name",
                "transport",
                "address",
                "tags",
                "agent_python",
                "work_dir",
                "worker_queue",
                "runtime",
                "agent_port",
                "agent_secret",
            }
        ]
        # Uniqueness and field rules are DeviceForm's job (one set of messages for UI and API).
        extra_kwargs = {
            "name": {"validators": []},
            "address": {"validators": []},
            "agent_python": {"validators": [], "required": False},
            "work_dir": {"validators": [], "required": False},
            "worker_queue": {"validators": [], "required": False},
            "runtime": {"required": False},
            "agent_port": {"validators": [], "required": False},
            "agent_secret": {"validators": [], "required": False},
        }

    def to_representation(self, instance: Device) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["tags"] = sorted(tag.name for tag in instance.tags.all())
        request = self.context.get("request")
        if request is None or not is_operator(request.user):  # the agent secret is for operators only
            data.pop("agent_secret", None)
        return data

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        form_data = {
            "name": attrs.get("name", ""),
            "transport": attrs.get("transport", Transport.TCP),
            "address": attrs.get("address", ""),
            "tags": ",".join(attrs.get("tags", [])),
            "agent_python": attrs.get("agent_python") or DeviceForm.base_fields["agent_python"].initial,
            "work_dir": attrs.get("work_dir") or DeviceForm.base_fields["work_dir"].initial,
            "worker_queue": attrs.get("worker_queue", ""),
            "runtime": attrs.get("runtime") or DeviceForm.base_fields["runtime"].initial,
            "agent_port": attrs.get("agent_port") or DeviceForm.base_fields["agent_port"].initial,
            "agent_secret": attrs.get("agent_secret", ""),
        }
        form = DeviceForm(data=form_data, instance=self.instance)
        if not form.is_valid():
            raise serializers.ValidationError(
                {
                    field: [e["message"] for e in errors]
                    for field, errors in form.errors.get_json_data().items()
                }
            )
        self._device_settings = form.device_settings()
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Device:
        return services.create_device(self._device_settings)
