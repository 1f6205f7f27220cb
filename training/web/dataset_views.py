"""Data set pages: the list with its upload form, one data set's page (size, classes, clients, label
mix), and deleting one. Writes go through training/jobs/datasets.py; operators only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.decorators import operator_required
from accounts.roles import is_operator
from training.fl.data_formats import DataFormatError
from training.jobs import datasets
from training.models import DataSet, Job
from training.web.charts.datasets import dataset_figures

FORMAT_CHOICES = [("", "From the file name"), ("leaf", "LEAF JSON"), ("npz", "NPZ"), ("csv", "CSV")]


class DataSetUploadForm(forms.Form):
    name = forms.CharField(max_length=120, required=False, help_text="Default: the file's name.")
    file = forms.FileField(
        help_text="LEAF JSON (users, num_samples, user_data), NPZ (x, y[, client_ids]) or CSV."
    )
    format = forms.ChoiceField(choices=FORMAT_CHOICES, required=False)
    feature_shape = forms.CharField(
        required=False, max_length=60, help_text="Reshape each sample, e.g. 1,28,28 for FEMNIST's 784 pixels."
    )
    num_classes = forms.IntegerField(
        required=False, min_value=2, max_value=10_000, help_text="Default: largest label + 1."
    )
    label_column = forms.CharField(
        required=False, max_length=80, help_text="CSV: the label column (default label)."
    )
    client_column = forms.CharField(
        required=False, max_length=80, help_text="CSV: the client-id column (default client_id when present)."
    )

    def clean_feature_shape(self) -> list[int] | None:
        text = self.cleaned_data.get("feature_shape") or ""
        if not text.strip():
            return None
        try:
            shape = [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError(
                "write the shape as whole numbers separated by commas, e.g. 1,28,28"
            ) from None
        if not shape or any(d < 1 for d in shape):
            raise forms.ValidationError("every dimension must be a positive whole number")
        return shape

    def options(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            key: data.get(key)
            for key in ("format", "feature_shape", "num_classes", "label_column", "client_column")
        }


@require_GET
def dataset_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request, DataSetUploadForm(), [])


def _list_page(
    request: HttpRequest, form: DataSetUploadForm, problems: list[str], status: int = 200
) -> HttpResponse:
    return render(
        request,
        "training/dataset_list.html",
        {
            "datasets": DataSet.objects.select_related("owner"),
            "form": form,
            "problems": problems,
            "can_operate": is_operator(request.user),
            "max_bytes": datasets.max_upload_bytes(),
        },
        status=status,
    )


@operator_required
@require_POST
def dataset_upload(request: HttpRequest) -> HttpResponse:
    form = DataSetUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _list_page(request, form, [], status=400)
    upload = form.cleaned_data["file"]
    try:
        dataset = datasets.ingest(
            request.user,
            upload,
            name=form.cleaned_data.get("name") or "",
            original_name=upload.name,
            options=form.options(),
            declared_size=upload.size,
        )
    except DataFormatError as exc:  # nothing was stored; every problem is listed
        return _list_page(request, form, list(exc.problems), status=400)
    messages.success(request, f"Data set #{dataset.pk} “{dataset.name}” checked and stored.")
    return redirect("training:dataset-detail", pk=dataset.pk)


@require_GET
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(DataSet.objects.select_related("owner"), pk=pk)
    jobs = Job.objects.filter(
        config__dataset=datasets.UPLOADED, config__dataset_params__dataset_id=dataset.pk
    )
    return render(
        request,
        "training/dataset_detail.html",
        {
            "dataset": dataset,
            "summary": dataset.summary,
            "clients": dataset.summary.get("clients"),
            "figures": {f"figure-{key}": figure for key, figure in dataset_figures(dataset.summary).items()},
            "jobs": jobs,
            "can_operate": is_operator(request.user),
        },
    )


@operator_required
@require_POST
def dataset_delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(DataSet, pk=pk)
    if Job.objects.filter(
        config__dataset=datasets.UPLOADED, config__dataset_params__dataset_id=dataset.pk
    ).exists():
        messages.error(request, "Jobs use this data set; it is kept so they can be re-run and analysed.")
        return redirect("training:dataset-detail", pk=dataset.pk)
    datasets.delete_dataset(dataset)
    messages.success(request, f"Data set “{dataset.name}” deleted.")
    return redirect("training:dataset-list")
