"""Pages and JSON endpoints of the device lab.

Login is enforced for every view by accounts.middleware; writes additionally need the operator
permission (accounts.decorators.operator_required). All reads and writes of phones go through
devices.services.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.decorators import json_endpoint, operator_required
from accounts.roles import is_operator
from devices import charts, services
from devices.adb_identity import platform_identity
from devices.extensions import panels_for
from devices.filters import DeviceFilterSet
from devices.forms import ConnectionTestForm, DeviceForm
from devices.models import AvailabilityInterval, Device, DeviceStatus, Runtime, Tag, TelemetrySample
from devices.probing import probe_address
from devices.tasks import enqueue_probe

# What "Test connection" says about the runtime it detected (devices.probing.detect_runtime).
RUNTIME_ADVICE = {
    "app": "Its shell runs no Python but Termux is installed: a stock phone — choose the app runtime "
    "(work dir /sdcard/fedfleet/) and start the agent in Termux with the command its page shows.",
    "exec": "Its shell runs Python: the exec runtime works; resident keeps the agent loaded between rounds.",
}
HISTORY_HOURS_DEFAULT = 24
HISTORY_HOURS_MAX = 24 * 7


def _filtered_devices(request: HttpRequest) -> DeviceFilterSet:
    return DeviceFilterSet(request.GET, queryset=Device.objects.prefetch_related("tags"))


@require_GET
def fleet(request: HttpRequest) -> HttpResponse:
    filterset = _filtered_devices(request)
    devices = filterset.qs if filterset.is_valid() else Device.objects.none()
    counts = services.status_counts()
    context = {
        "filterset": filterset,
        "devices": devices,
        "status_counts": [(DeviceStatus(value), n) for value, n in counts.items()],
        "total": sum(n for status, n in counts.items() if status != DeviceStatus.RETIRED),
        "show_retired": filterset.is_valid() and bool(filterset.form.cleaned_data.get("show_retired")),
        "retired_count": counts.get(DeviceStatus.RETIRED, 0),
        "tags": Tag.objects.filter(devices__isnull=False).distinct(),
        "active_status": request.GET.get("status", ""),
        "active_tag": request.GET.get("tag", ""),
        "availability_models": services.availability_model_counts(),
        # The Termux command of each app-mode phone (it holds the phone's secret: operators only).
        "app_phones": [
            (device, services.termux_command(device))
            for device in Device.objects.filter(runtime=Runtime.APP).exclude(status=DeviceStatus.RETIRED)
        ]
        if is_operator(request.user)
        else [],
    }
    return render(request, "devices/fleet.html", context)


@json_endpoint
@require_GET
def fleet_snapshot(request: HttpRequest) -> JsonResponse:
    """The fleet page's starting point: rows matching the page's filters, and counts over all phones."""
    filterset = _filtered_devices(request)
    if not filterset.is_valid():
        return JsonResponse({"errors": filterset.errors}, status=400)
    return JsonResponse(
        {
            "devices": [services.fleet_row(device) for device in filterset.qs],
            "counts": services.status_counts(),
            "generated_at": timezone.now().isoformat(),
        }
    )


@operator_required
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    form = DeviceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            device = services.create_device(form.device_settings())
        except ValidationError as exc:  # a race with another registration of the same phone
            form.add_error(None, exc)
        else:
            transaction.on_commit(lambda: enqueue_probe(device.pk, device.worker_queue))
            if form.reviving is not None:
                messages.success(
                    request,
                    f"{device.name} was retired; registered again, it is back in the lab with its history. "
                    "Its first health probe is on its way.",
                )
            else:
                messages.success(request, f"{device.name} registered; its first health probe is on its way.")
            return redirect("devices:detail", pk=device.pk)
    return render(request, "devices/device_form.html", {"form": form, "device": None})


@operator_required
@require_http_methods(["GET", "POST"])
def edit(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device.objects.prefetch_related("tags"), pk=pk)
    form = DeviceForm(request.POST or None, instance=device)
    if request.method == "POST" and form.is_valid():
        try:
            device = services.update_device(device.pk, form.device_settings())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            transaction.on_commit(lambda: enqueue_probe(device.pk, device.worker_queue))
            messages.success(request, f"{device.name} saved.")
            return redirect("devices:detail", pk=device.pk)
    return render(request, "devices/device_form.html", {"form": form, "device": device})


@operator_required
@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device, pk=pk)
    if request.method == "POST":
        try:
            removal = services.remove_device(device.pk)
        except services.DeviceInUse as exc:
            messages.error(request, str(exc))
            return redirect("devices:detail", pk=device.pk)
        messages.success(request, removal.message)
        return redirect("devices:fleet")
    # Say beforehand which of the two it will be: retired (past jobs name it) or deleted.
    history = services.device_history(device.pk)
    return render(request, "devices/device_confirm_delete.html", {"device": device, "history": history})


def _history_hours(request: HttpRequest) -> int:
    try:
        hours = int(request.GET.get("hours", HISTORY_HOURS_DEFAULT))
    except ValueError:
        return HISTORY_HOURS_DEFAULT
    return min(max(hours, 1), HISTORY_HOURS_MAX)


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device.objects.prefetch_related("tags"), pk=pk)
    now = timezone.now()
    hours = _history_hours(request)
    since = now - dt.timedelta(hours=hours)
    samples = TelemetrySample.objects.filter(device=device, recorded_at__gte=since).order_by("recorded_at")
    intervals = (
        AvailabilityInterval.objects.filter(device=device).exclude(ended_at__lt=since).order_by("started_at")
    )
    battery = charts.battery_figure(
        [charts.BatteryPoint(at=s.recorded_at, level=s.battery_level, charging=s.charging) for s in samples]
    )
    availability = charts.availability_timeline_figure(
        [
            charts.AvailabilitySpan(status=i.status, start=max(i.started_at, since), end=i.ended_at)
            for i in intervals
        ],
        now=now,
    )
    context: dict[str, Any] = {
        "device": device,
        "hours": hours,
        "hour_choices": [1, 6, 24, 72, 168],
        "recent_intervals": list(intervals.order_by("-started_at")[:20]),
        # json.loads(to_json()): plotly's own encoder handles numpy/dates; json_script re-encodes safely.
        "battery_figure": json.loads(battery.to_json()),
        "availability_figure": json.loads(availability.to_json()),
        # Cards other apps add (devices.extensions), e.g. the phone's participation in federated jobs.
        "panels": panels_for(device),
        # An app-mode phone's start command holds its secret: operators only.
        "termux_command": services.termux_command(device)
        if device.runtime == Runtime.APP and is_operator(request.user)
        else "",
    }
    return render(request, "devices/device_detail.html", context)


@require_GET
def adb_key(request: HttpRequest) -> HttpResponse:
    return render(request, "devices/adb_key.html", {"identity": platform_identity()})


def _connection_check(transport: str, address: str) -> dict[str, Any]:
    """Probe a phone that may not be registered yet, and explain the result to a person."""
    timeout = float(settings.FEDFLEET_PROBE_CONNECT_TIMEOUT_S)
    outcome = probe_address(transport, address, connect_timeout_s=timeout, detect=True)
    if outcome.status == DeviceStatus.ONLINE and outcome.telemetry is not None:
        props = outcome.telemetry.properties
        described = " ".join(part for part in (props.manufacturer, props.model) if part) or "a phone"
        android = f", Android {props.android_release}" if props.android_release else ""
        runtime = RUNTIME_ADVICE.get(outcome.runtime, "")
        return {
            "result": "online",
            "message": f"Connected: {described}{android}.{' ' + runtime if runtime else ''}",
            "model": props.model,
            "android_release": props.android_release,
            "runtime": outcome.runtime,
        }
    if outcome.status == DeviceStatus.UNAUTHORIZED:
        identity = platform_identity()
        return {
            "result": "unauthorized",
            "message": "The phone answered but has not accepted the platform's ADB key.",
            "detail": outcome.reason,
            "fingerprint": identity.fingerprint_md5,
            "fingerprint_sha256": identity.fingerprint_sha256,
            "how_to": [
                "Unlock the phone: an 'Allow USB debugging?' dialog shows an RSA key fingerprint.",
                f"Check that it reads {identity.fingerprint_md5}, tick 'Always allow', and tap Allow.",
                "No dialog (or a headless/rooted phone)? Append the public key from the ADB key page to "
                "/data/misc/adb/adb_keys on the phone, then test again.",
            ],
        }
    return {"result": "offline", "message": outcome.reason or "The phone did not answer."}


@json_endpoint
@require_POST
async def test_connection(request: HttpRequest) -> JsonResponse:
    """Try a transport/address from the register form. Async so the few seconds of waiting on a phone
    never hold up Django's shared thread for synchronous views."""
    user = await request.auser()
    if not await sync_to_async(is_operator)(user):
        return JsonResponse({"error": "operator permission required"}, status=403)
    form = ConnectionTestForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"result": "invalid", "errors": form.errors.get_json_data()}, status=400)
    result = await sync_to_async(_connection_check, thread_sensitive=False)(
        form.cleaned_data["transport"], form.cleaned_data["address"]
    )
    return JsonResponse(result)
