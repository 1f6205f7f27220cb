"""Django admin for the lab's records (read-mostly: registration and status go through the app's pages,
so that every change passes devices.services and reaches the live fleet page)."""

from django.contrib import admin

from devices.models import AvailabilityInterval, Device, Tag, TelemetrySample


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "transport",
        "address",
        "runtime",
        "status",
        "battery_level",
        "model",
        "last_seen_at",
    ]
    list_filter = ["status", "transport", "runtime", "tags"]
    search_fields = ["name", "address", "model"]
    readonly_fields = [
        field.name
        for field in Device._meta.get_fields()
        if getattr(field, "concrete", False) and not field.many_to_many and field.name not in {"id"}
    ]

    def has_add_permission(self, request):  # noqa: ANN001, ANN201 - Django's signature
        return False


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(TelemetrySample)
class TelemetrySampleAdmin(admin.ModelAdmin):
    list_display = ["device", "recorded_at", "battery_level", "charging", "ram_available_mb"]
    list_filter = ["device"]
    date_hierarchy = "recorded_at"


@admin.register(AvailabilityInterval)
class AvailabilityIntervalAdmin(admin.ModelAdmin):
    list_display = ["device", "status", "started_at", "ended_at", "reason"]
    list_filter = ["status", "device"]
