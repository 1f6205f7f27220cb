"""The device lab's records: phones, their telemetry over time, and their availability history.

A phone that took part in jobs is never deleted, only retired (DeviceStatus.RETIRED): the training
app's records point at it with PROTECT.

Rows here are written only by devices.services (one place that also emits the live events); everything
else reads them. `lease_job_id` is a plain integer on purpose: the training app records which job holds a
phone, and this app never imports training.
"""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q

from devices.addresses import TRANSPORT_TCP, TRANSPORT_USB
from devices.validators import (
    validate_agent_port,
    validate_agent_python,
    validate_agent_secret,
    validate_work_dir,
    validate_worker_queue,
)

DEFAULT_AGENT_PYTHON = "python3"
DEFAULT_WORK_DIR = "/data/local/tmp/fedfleet/"
DEFAULT_AGENT_PORT = 7000
APP_WORK_DIR = "/sdcard/fedfleet/"  # where Termux (app mode) and the shell both reach the agent's files


def new_agent_secret() -> str:
    """A phone's agent secret: 32 URL-safe characters (printable ASCII without spaces, as the agent
    requires; it is typed into Termux in app mode)."""
    return secrets.token_urlsafe(24)


class Transport(models.TextChoices):
    TCP = TRANSPORT_TCP, "TCP/IP (host:port)"
    USB = TRANSPORT_USB, "USB (serial)"


class DeviceStatus(models.TextChoices):
    ONLINE = "online", "Online"
    BUSY = "busy", "Busy"
    UNAUTHORIZED = "unauthorized", "Unauthorized"
    OFFLINE = "offline", "Offline"
    UNKNOWN = "unknown", "Unknown"
    # Removed from the lab but kept, because past jobs' records name it (services.remove_device). Out of
    # the online set (so never selected), never probed, hidden from the fleet list unless asked for;
    # only registering its address again brings it back (set_status never leaves this status).
    RETIRED = "retired", "Retired"

    @property
    def colour(self) -> str:
        """Badge colour (a CSS class suffix: badge-green, ...), NetBox style."""
        return STATUS_COLOURS[self.value]


STATUS_COLOURS: dict[str, str] = {
    DeviceStatus.ONLINE: "green",
    DeviceStatus.BUSY: "blue",
    DeviceStatus.UNAUTHORIZED: "orange",
    DeviceStatus.OFFLINE: "red",
    DeviceStatus.UNKNOWN: "grey",
    DeviceStatus.RETIRED: "grey",
}


class Runtime(models.TextChoices):
    """How the phone runs the agent (training/engine/runtimes/): once per round over the shell, as a
    resident process the platform starts over the shell, or as one a person started in Termux (app)."""

    EXEC = "exec", "exec (shell runs the agent each round)"
    RESIDENT = "resident", "resident (the platform keeps agent serve running)"
    APP = "app", "app (agent serve started in Termux)"

    @property
    def colour(self) -> str:
        return RUNTIME_COLOURS[self.value]


RUNTIME_COLOURS: dict[str, str] = {
    Runtime.EXEC: "grey",
    Runtime.RESIDENT: "blue",
    Runtime.APP: "green",
}


class Tag(models.Model):
    """A free label on phones ("lab-a", "rooted"), used for filtering. Stored normalised (lower case)."""

    name = models.SlugField(max_length=40, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Device(models.Model):
    name = models.CharField(max_length=64, unique=True)
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.TCP)
    # "host:port" for tcp (normalised by devices.addresses), the adb serial for usb.
    address = models.CharField(max_length=255, unique=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices")
    agent_python = models.CharField(
        max_length=200,
        default=DEFAULT_AGENT_PYTHON,
        validators=[validate_agent_python],
        help_text="How Python is run on the phone, e.g. python3",
    )
    work_dir = models.CharField(max_length=200, default=DEFAULT_WORK_DIR, validators=[validate_work_dir])
    worker_queue = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_worker_queue],
        help_text="Queue of the host the phone is plugged into; blank = shared",
    )
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.EXEC)
    agent_port = models.PositiveIntegerField(
        default=DEFAULT_AGENT_PORT,
        validators=[validate_agent_port],
        help_text="The phone's loopback port agent serve listens on (resident and app runtimes)",
    )
    # Authenticates the platform to the phone's agent (any app can reach the phone's loopback). Shown to
    # operators only; it reaches the phone only as the one-line command a person types (app) or as a
    # 0600 file pushed over ADB (resident), never on a command line or in an environment.
    agent_secret = models.CharField(
        max_length=256, default=new_agent_secret, validators=[validate_agent_secret]
    )

    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN)
    status_reason = models.CharField(max_length=300, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    # Telemetry: the latest values (the history is in TelemetrySample).
    manufacturer = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100, blank=True)
    android_release = models.CharField(max_length=32, blank=True)
    sdk_int = models.PositiveSmallIntegerField(null=True, blank=True)
    abi = models.CharField(max_length=32, blank=True)
    battery_level = models.PositiveSmallIntegerField(null=True, blank=True)
    charging = models.BooleanField(null=True, blank=True)
    battery_temperature_c = models.FloatField(null=True, blank=True)
    ram_total_mb = models.PositiveIntegerField(null=True, blank=True)
    ram_available_mb = models.PositiveIntegerField(null=True, blank=True)
    cpu_cores = models.PositiveSmallIntegerField(null=True, blank=True)
    # What the phone says drives its availability (virtual phones answer `getprop fedfleet.availability`
    # with their lab scenario, e.g. "alternating: group 1 of 2, period 30 s"); blank for real phones.
    availability_model = models.CharField(max_length=100, blank=True)
    telemetry_at = models.DateTimeField(null=True, blank=True)

    # Which federated job holds the phone (set by the training app); null = free.
    lease_job_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    # Set by a health probe while it talks to the phone; a conditional UPDATE on it is the claim.
    probe_claimed_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("operate_lab", "Can operate the lab (register phones, launch jobs)")]
        indexes = [models.Index(fields=["status"], name="device_status_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def status_colour(self) -> str:
        return STATUS_COLOURS.get(self.status, "grey")

    @property
    def runtime_colour(self) -> str:
        return RUNTIME_COLOURS.get(self.runtime, "grey")

    @property
    def retired(self) -> bool:
        return self.status == DeviceStatus.RETIRED

    @property
    def ram_total_gb(self) -> float | None:
        return None if self.ram_total_mb is None else round(self.ram_total_mb / 1024, 1)


class TelemetrySample(models.Model):
    """One point of a phone's telemetry history (at most one per FEDFLEET_TELEMETRY_SAMPLE_INTERVAL_S)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry_samples")
    recorded_at = models.DateTimeField(db_index=True)
    battery_level = models.PositiveSmallIntegerField(null=True, blank=True)
    charging = models.BooleanField(null=True, blank=True)
    battery_temperature_c = models.FloatField(null=True, blank=True)
    ram_available_mb = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["recorded_at"]
        indexes = [models.Index(fields=["device", "recorded_at"], name="telemetry_device_time_idx")]

    def __str__(self) -> str:
        return f"{self.device_id}@{self.recorded_at:%Y-%m-%d %H:%M:%S}"


class AvailabilityInterval(models.Model):
    """A span of time during which a phone had one status; `ended_at` null = the current span."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="availability")
    status = models.CharField(max_length=16, choices=DeviceStatus.choices)
    reason = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at"]
        indexes = [models.Index(fields=["device", "started_at"], name="availability_device_time_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["device"], condition=Q(ended_at__isnull=True), name="one_open_interval_per_device"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="interval_ends_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.status} {self.started_at:%Y-%m-%d %H:%M:%S}"
