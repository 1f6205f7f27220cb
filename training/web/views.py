"""Job pages: list, new-job form, live dashboard (+ its snapshot JSON), exports, compare.

Views stay thin: writes go through training.services, figures come from training.charts. Login is the
middleware's job (every view here needs it); operator-only actions are marked with `operator_required`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.decorators import json_endpoint, operator_required
from accounts.roles import is_operator
from devices.models import Device, DeviceStatus
from training.analysis import availability as availability_report
from training.analysis import loo
from training.analysis import submodel as submodel_report
from training.jobs import access, dispatch, exports, services
from training.jobs.config import DEFAULTS, JobConfig, JobConfigError, parse_job_config
from training.models import Job, JobStatus
from training.web.charts import availability as availability_charts
from training.web.charts import job as charts
from training.web.charts import submodel as submodel_charts
from training.web.forms import JobForm

JOBS_PER_PAGE = 50
MAX_COMPARED_JOBS = 12
DEFAULT_TARGET_ACCURACY = 0.9
DEFAULT_TARGET_AUC = 0.65
# The CSV header when a job has no committed round yet (services.export_rows gives the keys otherwise).
EXPORT_COLUMNS = (
    "round",
    "attempt",
    "accuracy",
    "loss",
    "reported",
    "select_s",
    "push_s",
    "train_s",
    "pull_s",
    "aggregate_s",
    "wall_s",
    "bytes_down",
    "bytes_up",
)
JOB_ACTIONS = {
    "pause": services.pause_job,
    "resume": services.resume_job,
    "cancel": services.cancel_job,
}


# --- list -----------------------------------------------------------------------------------------------
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    jobs = Job.objects.select_related("owner")
    if status in JobStatus.values:
        jobs = jobs.filter(status=status)
    else:
        status = ""
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "training/job_list.html",
        {
            "page": page,
            "jobs": page.object_list,
            "statuses": JobStatus.choices,
            "selected_status": status,
            "can_operate": is_operator(request.user),
        },
    )


# --- new job --------------------------------------------------------------------------------------------
def eligible_phone_count(config: JobConfig) -> int:
    """Phones that could join the job now; the same query the engine selects from."""
    from training.engine.selection import eligible_devices  # noqa: PLC0415 - the engine pulls in torch; only here

    return len(eligible_devices(config))


def _clone_source(request: HttpRequest) -> dict[str, Any] | None:
    """`?from=<job id>` pre-fills the form with that job's configuration ("run again with changes")."""
    source = request.GET.get("from", "")
    stored = request.GET.get("dataset_id", "")
    if stored.isdigit():  # "New job on it" from a data set's page
        return {"dataset": "uploaded", "dataset_params": {"dataset_id": int(stored)}, "partition": "natural"}
    if not source.isdigit():
        return None
    job = Job.objects.filter(pk=int(source)).first()
    if job is None:
        return None
    return {**job.config, "name": f"{job.name} (again)"[:120]}


@operator_required
def job_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = JobForm(request.POST)
        if form.is_valid() and form.config is not None:
            job = services.create_job(request.user, form.config)
            messages.success(request, f"Job #{job.pk} “{job.name}” queued.")
            return redirect("training:job-detail", pk=job.pk)
    else:
        form = JobForm(initial_config=_clone_source(request))
    return render(
        request,
        "training/job_form.html",
        {
            "form": form,
            "eligible_phones": eligible_phone_count(form.config or DEFAULTS),
            "model_size": form_model_size(form),
            "plugin_problems": plugin_problems(),
            "online_phones": Device.objects.filter(status=DeviceStatus.ONLINE).count(),
        },
    )


def model_size(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter count of the model a form's fields describe (before anything launches): the data
    set gives its input shape and classes, the model's declaration its parameters."""
    from training.engine.jobdata import job_model_spec  # noqa: PLC0415 - torch, only here
    from training.fl.nets import spec_parameter_count  # noqa: PLC0415

    try:
        config = parse_job_config(data)
        spec = job_model_spec(config, _dataset_for_size(config))
        count = spec_parameter_count(spec)
    except JobConfigError as exc:
        wanted = {"model", "model_params", "dataset", "dataset_params"}
        errors = {k: v for k, v in exc.errors.items() if k in wanted} or exc.errors
        return {"parameters": None, "errors": errors, "text": "; ".join(errors.values())}
    except ValueError as exc:  # a plug-in's own complaint, a data set that cannot be read
        return {"parameters": None, "errors": {"model": str(exc)}, "text": str(exc)}
    return {
        "parameters": count,
        "bytes": count * 4,
        "spec": spec,
        "text": f"{count:,} parameters ({count * 4 / 1e6:.2f} MB as float32) for input {spec['input_shape']}, "
        f"{spec['num_classes']} classes",
    }


_SIZE_CACHE: dict[str, Any] = {}


def _dataset_for_size(config: JobConfig) -> Any:
    """The data set's splits, kept per process by its name and parameters (digits loads in 0.2 s; a
    stored file is read once)."""
    from training.engine.jobdata import load_job_dataset  # noqa: PLC0415

    key = json.dumps([config.dataset, config.data_seed, config.dataset_params], sort_keys=True)
    if key not in _SIZE_CACHE:
        if len(_SIZE_CACHE) > 16:
            _SIZE_CACHE.clear()
        _SIZE_CACHE[key] = load_job_dataset(config)
    return _SIZE_CACHE[key]


def form_model_size(form: JobForm) -> dict[str, Any]:
    """The size shown when the page loads: of the posted config, else of the form's initial choices."""
    if form.config is not None:
        return model_size(form.config.to_dict())
    data = {name: form.fields[name].initial for name in ("model", "dataset", "data_seed")}
    data["dataset_params"] = form.initial_params("dataset", data["dataset"])
    data["model_params"] = form.initial_params("model", data["model"])
    return model_size(data)


@json_endpoint
@require_GET
def model_size_json(request: HttpRequest) -> JsonResponse:
    """The new-job form asks this as the model, its parameters or the data set change."""
    form = JobForm(request.GET)
    form.is_valid()
    data = {
        "model": request.GET.get("model", DEFAULTS.model),
        "dataset": request.GET.get("dataset", DEFAULTS.dataset),
    }
    if hasattr(form, "cleaned_data"):
        chosen = form.config_data()
        data.update({k: chosen[k] for k in ("model_params", "dataset_params", "data_seed") if k in chosen})
        model_errors = form.errors.get("model")
        if model_errors:
            message = str(model_errors[0])
            return JsonResponse(
                {"parameters": None, "errors": {"model_params": message}, "text": message}, status=400
            )
    answer = model_size(data)
    answer.pop("spec", None)
    return JsonResponse(answer, status=200 if answer["parameters"] is not None else 400)


def plugin_problems() -> list[str]:
    from training.fl.datasets import plugin_datasets  # noqa: PLC0415
    from training.fl.nets import plugin_models  # noqa: PLC0415

    return [str(p) for p in (*plugin_models().problems, *plugin_datasets().problems)]


@json_endpoint
@require_GET
def eligible_phones(request: HttpRequest) -> JsonResponse:
    """How many phones match the form's eligibility fields right now (the form updates it as you type)."""
    fields = ("device_tags", "min_battery", "require_charging")
    data = {name: request.GET[name] for name in fields if name in request.GET}
    try:
        config = parse_job_config(data)
    except JobConfigError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    return JsonResponse(
        {
            "eligible": eligible_phone_count(config),
            "online": Device.objects.filter(status=DeviceStatus.ONLINE).count(),
            "constraints": {name: getattr(config, name) for name in fields},
        }
    )


# --- dashboard ------------------------------------------------------------------------------------------
@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
    return render(
        request,
        "training/job_detail.html",
        {
            "job": job,
            "config": job.config,
            # Buttons that change the job: its owner and staff only (jobs/access.py); others read.
            "can_operate": access.can_manage(request.user, job),
            "read_only_reason": ""
            if access.can_manage(request.user, job)
            else _read_only_reason(request, job),
            "has_final_model": services.final_model_path(job) is not None,
            "onnx": onnx_info(job),
            "submodel": submodel_report.privacy_info(job),  # None unless a submodel job
            "snapshot_url": reverse("training:job-snapshot", args=[job.pk]),
            "websocket_path": f"/ws/jobs/{job.pk}/",
        },
    )


def json_safe(value: Any) -> Any:
    """Replace NaN/±inf (a diverged loss) by None: JSON has no such numbers, and JSON.parse would reject
    the whole snapshot, blanking the dashboard exactly when someone needs to see what went wrong."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def snapshot_with_figures(job: Job) -> dict[str, Any]:
    """services.job_snapshot plus what only the web layer knows: figures and the model download link."""
    snapshot = services.job_snapshot(job)
    snapshot["figures"] = charts.dashboard_figures(snapshot["rounds"], headline=job.headline_metric)
    add_availability(snapshot, job)
    if job.config.get("backend") == "simulation":  # influence of simulated clients: not built yet
        snapshot["influence"] = {
            **submodel_report.NO_INFLUENCE,
            "reason": "client influence is not estimated for simulated clients yet (run the lab twin)",
        }
    elif submodel_report.privacy_info(job) is None:
        add_influence(snapshot, job)
    else:  # client influence models small dense models' FedAvg deltas; it does not analyse submodel jobs
        snapshot["influence"] = dict(submodel_report.NO_INFLUENCE)
    add_submodel(snapshot, job)
    has_model = services.final_model_path(job) is not None
    snapshot["final_model_url"] = reverse("training:job-model", args=[job.pk]) if has_model else None
    snapshot["onnx"] = onnx_info(job)
    return json_safe(snapshot)


def add_availability(snapshot: dict[str, Any], job: Job) -> None:
    """The availability section: heatmap, participation and bias figures, plus their summary numbers."""
    report = availability_report.job_report(job)
    snapshot["figures"].update(availability_charts.report_figures(report))
    snapshot["availability"] = report.summary()


def add_influence(snapshot: dict[str, Any], job: Job) -> None:
    """The client-influence section (ranking, heatmap, attack success, exclusions, exact LOO runs)."""
    from training.web.influence_section import add_to_snapshot  # noqa: PLC0415 - pulls in the analysis maths

    add_to_snapshot(job, snapshot)


def add_submodel(snapshot: dict[str, Any], job: Job) -> None:
    """Submodel jobs: bytes vs the full model, AUC per round, the privacy preset (analysis/submodel.py)."""
    report = submodel_report.job_report(job)
    if report is not None:
        snapshot["figures"].update(submodel_charts.report_figures(report))
        report.pop("auc_rows")
        snapshot["submodel"] = report


@json_endpoint
@require_GET
def job_snapshot(request: HttpRequest, pk: int) -> JsonResponse:
    job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
    return JsonResponse(snapshot_with_figures(job))


@require_POST
@operator_required
def job_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if not access.can_manage(request.user, job):
        return HttpResponseForbidden(access.refusal(job))
    try:
        JOB_ACTIONS[action](job, request.user)
    except services.JobActionError as exc:
        messages.error(request, f"Could not {action} job #{job.pk}: {exc}.")
    else:
        messages.success(request, f"Job #{job.pk}: {action} requested.")
    return redirect("training:job-detail", pk=job.pk)


@require_POST
@operator_required
def job_twin(request: HttpRequest, pk: int) -> HttpResponse:
    """Launch the job's twin on the other backend ("Run in simulation" / "Run on the lab")."""
    from training.jobs.simulation_config import twin_config  # noqa: PLC0415

    job = get_object_or_404(Job, pk=pk)
    data = twin_config(job.config, lab_clients=job.participants.count())
    try:
        twin = services.create_job(request.user, parse_job_config(data))
    except JobConfigError as exc:
        messages.error(request, f"Could not launch the twin of job #{job.pk}: {exc}.")
        return redirect("training:job-detail", pk=job.pk)
    services.log(twin.pk, f"twin of job #{job.pk} ({job.config.get('backend', 'lab')})")
    messages.success(request, f"Job #{twin.pk} is job #{job.pk}'s twin; compare them: "
                     f"{reverse('training:job-compare')}?ids={job.pk},{twin.pk}")  # fmt: skip
    return redirect(f"{reverse('training:job-compare')}?ids={job.pk},{twin.pk}")


# --- client influence: exclude / include a phone, exact leave-one-out --------------------------------
@require_POST
@operator_required
def participant_exclusion(request: HttpRequest, pk: int, device_id: int, action: str) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if not access.can_manage(request.user, job):
        return HttpResponseForbidden(access.refusal(job))
    participant = get_object_or_404(job.participants.select_related("device"), device_id=device_id)
    name = participant.device.name
    try:
        if action == "exclude":
            reason = request.POST.get("reason", "").strip()[:150] or "excluded by an operator"
            changed = services.exclude_participant(job, participant, reason=reason, by=request.user)
        else:
            changed = services.include_participant(job, participant, by=request.user)
    except services.JobActionError as exc:
        messages.error(request, f"Could not {action} {name}: {exc}.")
    else:
        done = "excluded from" if action == "exclude" else "included again in"
        if changed:
            messages.success(request, f"{name} {done} job #{job.pk} from the next round on.")
        else:
            messages.info(request, f"{name} was already {done.split()[0]}.")
    return redirect("training:job-detail", pk=job.pk)


@require_POST
@operator_required
def run_exact_loo(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if not access.can_manage(request.user, job):
        return HttpResponseForbidden(access.refusal(job))
    try:
        run = loo.request_exact_leave_one_out(job, request.user)
    except services.JobActionError as exc:
        messages.error(request, f"Exact leave-one-out not started: {exc}.")
    else:
        messages.success(
            request, f"Exact leave-one-out run #{run.pk} queued (rounds 1–{run.params['round']})."
        )
    return redirect("training:job-detail", pk=job.pk)


# --- exports --------------------------------------------------------------------------------------------
def _attachment(response: HttpResponse, filename: str) -> HttpResponse:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
def export_csv(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    rows = services.export_rows(job)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    writer = csv.DictWriter(response, fieldnames=list(rows[0]) if rows else list(EXPORT_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return _attachment(response, f"job-{job.pk}-rounds.csv")


@require_GET
def export_json(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
    body = json_safe({"job": services.job_summary(job), "rounds": services.export_rows(job)})
    response = HttpResponse(json.dumps(body, indent=2), content_type="application/json")
    return _attachment(response, f"job-{job.pk}-rounds.json")


@require_GET
def download_model(request: HttpRequest, pk: int) -> FileResponse:
    job = get_object_or_404(Job, pk=pk)
    path = services.final_model_path(job)
    if path is None:
        raise Http404("This job has no exported model yet.")
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"job-{job.pk}-round-{job.committed_rounds}.safetensors",
        content_type="application/octet-stream",
    )


def onnx_info(job: Job) -> dict[str, Any] | None:
    """The ONNX export as pages and the API show it: its download link and check, or why it failed."""
    status = exports.onnx_status(job)
    if status is None:
        return None
    info = {key: value for key, value in status.items() if key != "path"}
    if "path" in status:
        info["url"] = reverse("training:job-onnx", args=[job.pk])
    return info


@require_GET
def download_onnx(request: HttpRequest, pk: int) -> FileResponse:
    job = get_object_or_404(Job, pk=pk)
    status = exports.onnx_status(job)
    if status is None or "path" not in status:
        raise Http404("This job has no ONNX export yet.")
    return FileResponse(
        status["path"].open("rb"),
        as_attachment=True,
        filename=f"job-{job.pk}-round-{status['round']}.onnx",
        content_type="application/octet-stream",
    )


@operator_required
@require_POST
def request_onnx_export(request: HttpRequest, pk: int) -> HttpResponse:
    """Export a completed job's final model as ONNX now (jobs completed before exports existed, or a
    failed export after a fix); the training queue does the work."""
    job = get_object_or_404(Job, pk=pk)
    if job.status != JobStatus.COMPLETED:
        messages.error(request, "Only a completed job's final model is exported.")
    else:
        dispatch.export_onnx(job.pk)
        messages.success(request, "ONNX export queued; the download appears here when it is checked.")
    return redirect("training:job-detail", pk=job.pk)


# --- compare --------------------------------------------------------------------------------------------
def parse_job_ids(values: list[str]) -> list[int]:
    """`?ids=1,2,3` and `?ids=1&ids=2` both work (the list page's checkboxes send the second form)."""
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part.isdigit() and int(part) not in ids:
                ids.append(int(part))
    return ids[:MAX_COMPARED_JOBS]


def parse_target(value: str | None, default: float = DEFAULT_TARGET_ACCURACY) -> tuple[float, str | None]:
    if value in (None, ""):
        return default, None
    try:
        target = float(value)
    except ValueError:
        return default, f"“{value}” is not a number; using {default:g}."
    if not 0 < target <= 1:
        return default, f"The target must be in (0, 1]; using {default:g}."
    return target, None


def compared_metric(jobs: Sequence[Job]) -> str:
    """What the compare page overlays: AUC when every job is a click-through-rate job (their accuracy
    says little), else accuracy."""
    return "AUC" if jobs and all(job.headline_metric == "AUC" for job in jobs) else "accuracy"


def job_label(job: Job) -> str:
    return f"#{job.pk} {job.name} ({job.algorithm})"


@dataclasses.dataclass(frozen=True)
class ComparedJob:
    job: Job
    rounds_to_target: int | None
    final_accuracy: float | None
    best_accuracy: float | None
    # The comparison FedLaAvg is about: how much accuracy swings at the end, and how biased the updates were.
    oscillation: float | None = None  # std of the accuracy over the last OSCILLATION_ROUNDS committed rounds
    mean_bias: float | None = None  # mean per-round availability bias (TV distance)


OSCILLATION_ROUNDS = 10


def accuracy_oscillation(accuracies: list[float], last: int = OSCILLATION_ROUNDS) -> float | None:
    """Population standard deviation of the last `last` accuracies (None with fewer than two)."""
    tail = accuracies[-last:]
    return statistics.pstdev(tail) if len(tail) >= 2 else None


@require_GET
def job_compare(request: HttpRequest) -> HttpResponse:
    ids = parse_job_ids(request.GET.getlist("ids"))
    jobs_by_id = {job.pk: job for job in Job.objects.filter(pk__in=ids).select_related("owner")}
    jobs = [jobs_by_id[i] for i in ids if i in jobs_by_id]
    metric = compared_metric(jobs)
    default_target = DEFAULT_TARGET_AUC if metric == "AUC" else DEFAULT_TARGET_ACCURACY
    target, target_error = parse_target(request.GET.get("target"), default_target)
    series = []
    for job in jobs:
        rounds = [r.snapshot() for r in job.rounds.all()]
        series.append((job_label(job), charts.with_auc_as_accuracy(rounds) if metric == "AUC" else rounds))
    rows = []
    for job, (_, rounds) in zip(jobs, series, strict=True):
        accuracies = [r["accuracy"] for r in charts.committed_rounds(rounds) if r["accuracy"] is not None]
        rows.append(
            ComparedJob(
                job=job,
                rounds_to_target=charts.rounds_to_target(rounds, target),
                final_accuracy=charts.final_accuracy(rounds),
                best_accuracy=max(accuracies, default=None),
                oscillation=accuracy_oscillation(accuracies),
                mean_bias=availability_report.job_report(job, max_rounds=0).summary()["mean_tv"],
            )
        )
    missing = [i for i in ids if i not in jobs_by_id]
    return render(
        request,
        "training/job_compare.html",
        {
            "rows": rows,
            "target": target,
            "target_error": target_error,
            "missing_ids": missing,
            "ids_value": ",".join(str(job.pk) for job in jobs),
            "selected_ids": [job.pk for job in jobs],
            "figure": json_safe(charts.compare_accuracy_figure(series, target=target, metric=metric)),
            "metric": metric,
            "recent_jobs": Job.objects.select_related("owner")[:30],
            "oscillation_rounds": OSCILLATION_ROUNDS,
        },
    )


def _read_only_reason(request: HttpRequest, job: Job) -> str:
    """What the dashboard says to an operator who may not change this job."""
    return (
        f"Read-only: job #{job.pk} belongs to {job.owner.get_username()}."
        if is_operator(request.user)
        else ""
    )
