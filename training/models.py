"""Federated jobs as rows: every background run is a persisted record the UI can show (NetBox style).

Job ── Participant (a phone and its data shard for this job)
   └── Round ── ClientResult (one selected phone in one round attempt)

State lives here, not in Celery: every task takes ids and re-reads these rows, so a restarted worker,
web server or Redis resumes a job at its last committed round.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @property
    def badge(self) -> str:
        return JOB_BADGES[self.value]


JOB_BADGES = {
    "queued": "secondary",
    "running": "primary",
    "paused": "warning",
    "completed": "success",
    "failed": "danger",
    "cancelled": "dark",
}
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_JOB_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(models.Model):
    name = models.CharField(max_length=120)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # The validated job configuration (training/jobs/config.py); the main fields are copied to columns
    # so lists can filter and sort without reading JSON.
    config = models.JSONField()
    algorithm = models.CharField(max_length=32)
    dataset = models.CharField(max_length=32)
    model_name = models.CharField(max_length=32)
    rounds_total = models.PositiveIntegerField()
    clients_per_round = models.PositiveIntegerField()
    # The last committed round (0 = none yet); the next round to run is committed_rounds + 1.
    committed_rounds = models.PositiveIntegerField(default=0)
    last_accuracy = models.FloatField(null=True, blank=True)
    last_loss = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("operate_jobs", "Can launch, pause, resume and cancel federated jobs")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def status_badge(self) -> str:
        return JOB_BADGES.get(self.status, "secondary")

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES

    @property
    def progress_percent(self) -> int:
        return int(100 * self.committed_rounds / max(self.rounds_total, 1))

    @property
    def headline_metric(self) -> str:
        """What a job is judged by: test accuracy, except for click-through-rate models, whose accuracy
        says little (most samples are no-clicks) and AUC is what counts."""
        return "AUC" if self.model_name == "ctr" else "accuracy"

    @property
    def headline(self) -> dict[str, Any]:
        """The one figure a job's header and list show: its headline_metric after the last round."""
        if self.headline_metric == "AUC":
            last = (
                self.rounds.filter(status=RoundStatus.COMMITTED, number=self.committed_rounds)
                .values_list("metrics", flat=True)
                .first()
            )
            auc = last.get("auc") if isinstance(last, dict) else None
            return {"label": "AUC", "value": auc, "text": "–" if auc is None else f"{auc:.3f}"}
        value = self.last_accuracy
        return {"label": "accuracy", "value": value, "text": "–" if value is None else f"{value * 100:.1f}%"}


class Participant(models.Model):
    """A phone taking part in a job, with the data shard it holds (pushed once per job)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="participants")
    # PROTECT: history is never lost — a phone with jobs in its past is retired, not deleted
    # (devices.services.remove_device), so these rows keep naming it.
    # A simulated client (backend "simulation") has no phone: device is null and client_index names it.
    device = models.ForeignKey(
        "devices.Device", null=True, blank=True, on_delete=models.PROTECT, related_name="participations"
    )
    client_index = models.PositiveIntegerField()
    num_samples = models.PositiveIntegerField()
    label_counts = models.JSONField(default=list)
    shard_sha256 = models.CharField(max_length=64)
    # Last round whose aggregate used this phone's update (FedLaAvg selects by it; charts count it).
    last_round = models.PositiveIntegerField(null=True, blank=True)
    rounds_reported = models.PositiveIntegerField(default=0)
    excluded = models.BooleanField(default=False)
    excluded_reason = models.CharField(max_length=200, blank=True)
    # The current exclusion (its full history is in Exclusion rows): when, after which round, by whom.
    excluded_at = models.DateTimeField(null=True, blank=True)
    excluded_round = models.PositiveIntegerField(null=True, blank=True)
    excluded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    excluded_auto = models.BooleanField(default=False)
    # Which data this client trained on, in words for the dashboard: "shard of 54 samples pushed" or,
    # for a phone-resident job, "phone's own data/train.npz: 120 samples" ("counts withheld" when the
    # job does not let phones report them). Empty for jobs from before it existed.
    data_source = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["client_index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "device"], name="participant_unique_device"),
            models.UniqueConstraint(fields=["job", "client_index"], name="participant_unique_index"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} client {self.client_index} (device {self.device_id})"

    @property
    def client_id(self) -> str:
        """The id strategies know the client by: its phone's id, or a simulated client's sim_client_id."""
        return str(self.device_id) if self.device_id is not None else sim_client_id(self.client_index)

    @property
    def display_name(self) -> str:
        return self.device.name if self.device is not None else sim_client_name(self.client_index)


def sim_client_id(index: int) -> str:
    """A simulated client's id: zero-padded, so that ids sort (strategies sort them) in index order."""
    return f"s{index:05d}"


def sim_client_name(index: int) -> str:
    return f"sim-{index:05d}"


def sim_client_index(client_id: str) -> int:
    return int(client_id[1:])


class RoundStatus(models.TextChoices):
    CONFIGURING = "configuring", "Configuring"
    TRAINING = "training", "Training"
    AGGREGATING = "aggregating", "Aggregating"
    COMMITTED = "committed", "Committed"
    ABANDONED = "abandoned", "Abandoned"


OPEN_ROUND_STATUSES = (RoundStatus.CONFIGURING, RoundStatus.TRAINING, RoundStatus.AGGREGATING)

ROUND_BADGES = {
    "configuring": "info",
    "training": "primary",
    "aggregating": "warning",
    "committed": "success",
    "abandoned": "danger",
}


class Round(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    # A round that is abandoned (too few reports) is retried as a new attempt with the same number.
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=12, choices=RoundStatus.choices, default=RoundStatus.CONFIGURING)
    goal = models.PositiveIntegerField()
    min_reports = models.PositiveIntegerField()
    deadline_at = models.DateTimeField()
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Seconds per phase; push/train/pull are the slowest phone's, as they bound the round.
    select_s = models.FloatField(default=0)
    push_s = models.FloatField(default=0)
    train_s = models.FloatField(default=0)
    pull_s = models.FloatField(default=0)
    aggregate_s = models.FloatField(default=0)
    wall_s = models.FloatField(default=0)
    accuracy = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict)
    bytes_down = models.BigIntegerField(default=0)
    bytes_up = models.BigIntegerField(default=0)
    reason = models.CharField(max_length=200, blank=True)
    # Each participant's availability when selection ran (device id -> state; see engine/selection.py);
    # with the ClientResults it is the raw material of the availability heatmap.
    availability = models.JSONField(default=dict)
    # When reporting ended (training -> aggregating): the watchdog finishes an aggregation stale for long.
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "number", "attempt"], name="round_unique_attempt"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} round {self.number}.{self.attempt}"

    @property
    def status_badge(self) -> str:
        return ROUND_BADGES.get(self.status, "secondary")

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "number": self.number,
            "attempt": self.attempt,
            "status": self.status,
            "goal": self.goal,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "timings": {
                "select": self.select_s,
                "push": self.push_s,
                "train": self.train_s,
                "pull": self.pull_s,
                "aggregate": self.aggregate_s,
                "wall": self.wall_s,
            },
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "metrics": self.metrics,
            "reason": self.reason,
            "availability": self.availability,
        }


class ClientState(models.TextChoices):
    SELECTED = "selected", "Selected"
    PUSHING = "pushing", "Pushing"
    TRAINING = "training", "Training"
    PULLING = "pulling", "Pulling"
    REPORTED = "reported", "Reported"
    LATE = "late", "Late"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
    DROPPED = "dropped", "Dropped"


CLIENT_BADGES = {
    "selected": "secondary",
    "pushing": "info",
    "training": "primary",
    "pulling": "info",
    "reported": "success",
    "late": "warning",
    "failed": "danger",
    "rejected": "danger",
    "dropped": "dark",
}
IN_FLIGHT_STATES = (ClientState.SELECTED, ClientState.PUSHING, ClientState.TRAINING, ClientState.PULLING)


class ClientResult(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="client_results")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="client_results")
    # PROTECT, as Participant's: a phone with history is retired, never deleted. Simulated clients have
    # no phone: device is null and client_index names the client (rows exist only for selected clients).
    device = models.ForeignKey(
        "devices.Device", null=True, blank=True, on_delete=models.PROTECT, related_name="client_results"
    )
    client_index = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=ClientState.choices, default=ClientState.SELECTED)
    reason = models.CharField(max_length=300, blank=True)
    num_samples = models.PositiveIntegerField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    epoch = models.FloatField(null=True, blank=True)
    step = models.PositiveIntegerField(null=True, blank=True)
    steps_total = models.PositiveIntegerField(null=True, blank=True)
    metrics = models.JSONField(default=dict)
    bytes_down = models.BigIntegerField(default=0)
    bytes_up = models.BigIntegerField(default=0)
    push_s = models.FloatField(default=0)
    train_s = models.FloatField(default=0)
    pull_s = models.FloatField(default=0)
    reported_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The run that holds this result (engine/client.py): an owner token, blank when no run holds it, and
    # its heartbeat. A redelivered task finds a live owner and leaves the run alone; an owner silent
    # for leases.RUN_STALE_AFTER_S died with its worker and may be taken over.
    runner = models.CharField(max_length=32, blank=True, default="")
    runner_seen_at = models.DateTimeField(null=True, blank=True)
    # When its run_client task was last sent (the watchdog re-sends one lost with Redis or a worker).
    dispatched_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["round_id", "device_id"]
        constraints = [
            models.UniqueConstraint(fields=["round", "device"], name="client_result_unique"),
            models.UniqueConstraint(
                fields=["round", "client_index"],
                condition=models.Q(device__isnull=True),
                name="client_result_unique_simulated",
            ),
        ]

    def __str__(self) -> str:
        return f"round {self.round_id} device {self.device_id}: {self.state}"

    @property
    def client_id(self) -> str:
        return str(self.device_id) if self.device_id is not None else sim_client_id(self.client_index or 0)

    @property
    def client_name(self) -> str:
        return self.device.name if self.device is not None else sim_client_name(self.client_index or 0)

    @property
    def state_badge(self) -> str:
        return CLIENT_BADGES.get(self.state, "secondary")

    def snapshot(self) -> dict[str, Any]:
        return {
            # The dashboard keys its client cells by this: a simulated client's id where there is no phone.
            "device": self.device_id if self.device_id is not None else self.client_id,
            "device_name": self.client_name,
            "client": self.client_id,
            # How the client runs the agent (exec / resident / app); simulated clients run in-process.
            "runtime": self.device.runtime if self.device is not None else "simulated",
            "round": self.round.number,
            "state": self.state,
            "reason": self.reason,
            "samples": self.num_samples,
            "loss": self.loss,
            "epoch": self.epoch,
            "step": self.step,
            "steps_total": self.steps_total,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "timings": {"push": self.push_s, "train": self.train_s, "pull": self.pull_s},
        }


class LogLevel(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"


class JobLogEntry(models.Model):
    """The job's event log: what happened and why, in words, kept for the dashboard and exports."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_entries")
    at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    round_number = models.PositiveIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["job", "-at"])]

    def __str__(self) -> str:
        return self.message

    def snapshot(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "level": self.level,
            "round": self.round_number,
            "message": self.message,
        }


# ------------------------------------------------------------------------------- client influence
# Fed-Influence (ALGORITHMS.md §5) per committed round, computed by training/analysis/ in the training
# queue. The tracker's own state (ε per client) is a safetensors file under the job dir
# (storage.influence_state_path); these rows are its per-round projection for the dashboard and exports.


class ClientInfluence(models.Model):
    """One client's cumulative influence after one committed round (ε_t: the client removed from every
    round so far). Signs: loss > 0 means the test loss would rise without the client (it helps);
    accuracy > 0 means the accuracy would rise without it (it harms)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="influences")
    # PROTECT, as Participant's: a phone with history is retired, never deleted. Simulated: null device.
    device = models.ForeignKey(
        "devices.Device", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    client_index = models.PositiveIntegerField(null=True, blank=True)
    round_number = models.PositiveIntegerField()
    selected = models.BooleanField(default=False)  # its update entered this round
    loss = models.FloatField(null=True, blank=True)  # L(w_t + ε_t) − L(w_t) on the test set
    loss_first_order = models.FloatField()  # ∇L(w_t)ᵀ ε_t
    round_loss_first_order = models.FloatField(default=0.0)  # this round's own term δ_t, first order
    params_norm = models.FloatField()  # ‖ε_t‖
    accuracy = models.FloatField(null=True, blank=True)  # acc(w_t + ε_t) − acc(w_t)
    truncated = models.BooleanField(default=False)  # some layer uses the truncated estimator (δ only)

    class Meta:
        ordering = ["round_number", "device_id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "round_number", "device"], name="influence_unique"),
        ]
        indexes = [models.Index(fields=["job", "round_number"])]

    def __str__(self) -> str:
        return f"job {self.job_id} round {self.round_number} device {self.device_id}: {self.loss}"


class RoundAnalysis(models.Model):
    """What the analysis of one committed round cost and found (influence cost, attack success rate).
    Its existence marks the round as analysed: re-running the analysis is a no-op."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="round_analyses")
    round_number = models.PositiveIntegerField()
    influence = models.BooleanField(default=False)  # influence was estimated for this round
    seconds = models.FloatField(default=0.0)  # the influence estimate's wall time
    fisher_products = models.PositiveIntegerField(default=0)
    per_sample_gradients = models.PositiveIntegerField(default=0)
    segments = models.PositiveIntegerField(default=0)
    evaluations = models.PositiveIntegerField(default=0)
    baseline_loss = models.FloatField(null=True, blank=True)
    baseline_accuracy = models.FloatField(null=True, blank=True)
    attack_success_rate = models.FloatField(null=True, blank=True)  # the job's declared backdoor test
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round_number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "round_number"], name="round_analysis_unique"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} round {self.round_number} analysis"


class ExclusionAction(models.TextChoices):
    EXCLUDE = "exclude", "Excluded"
    INCLUDE = "include", "Included again"


class Exclusion(models.Model):
    """Every exclusion and re-inclusion of a phone from a job: when, after which round, why, by whom."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="exclusions")
    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="exclusions")
    action = models.CharField(max_length=8, choices=ExclusionAction.choices)
    at = models.DateTimeField(auto_now_add=True)
    round_number = models.PositiveIntegerField()  # the last committed round when it happened
    reason = models.CharField(max_length=200)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    auto = models.BooleanField(default=False)  # decided by the job's automatic exclusion rule

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.action} {self.participant_id} after round {self.round_number}"

    def snapshot(self) -> dict[str, Any]:
        return {
            "device": self.participant.device_id,
            "device_name": self.participant.device.name,
            "action": self.action,
            "at": self.at.isoformat(),
            "round": self.round_number,
            "reason": self.reason,
            "by": self.by.get_username() if self.by else None,
            "auto": self.auto,
        }


class AnalysisStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class AnalysisKind(models.TextChoices):
    EXACT_LOO = "exact_loo", "Exact leave-one-out"


class AnalysisRun(models.Model):
    """An on-demand background analysis (the exact leave-one-out replay), shown with its progress."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="analysis_runs")
    kind = models.CharField(max_length=16, choices=AnalysisKind.choices, default=AnalysisKind.EXACT_LOO)
    status = models.CharField(max_length=10, choices=AnalysisStatus.choices, default=AnalysisStatus.QUEUED)
    progress = models.FloatField(default=0.0)  # 0..1
    message = models.CharField(max_length=300, blank=True)
    params = models.JSONField(default=dict)  # e.g. the round it replays up to
    result = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    cost_seconds = models.FloatField(default=0.0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.kind} #{self.pk}: {self.status}"

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "cost_seconds": self.cost_seconds,
            "requested_by": self.requested_by.get_username() if self.requested_by else None,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class DataSet(models.Model):
    """A federated data set someone brought (LEAF JSON, NPZ or CSV), checked in full before it was stored
    (training/fl/data_formats): its file lives under the data dir (jobs/datasets.py), `summary` is what
    its page shows (data_formats.summarize) and `options` how to read it again (feature shape, columns)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=120)
    format = models.CharField(max_length=8)
    original_name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    options = models.JSONField(default=dict)
    summary = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"data set #{self.pk} {self.name}"
