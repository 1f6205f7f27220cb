"""REST serializers for jobs. Validation of a new job is parse_job_config's, exactly as in the form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.urls import reverse
from rest_framework import serializers
from rest_framework.settings import api_settings

from training.jobs import services
from training.jobs.config import JobConfig, JobConfigError, parse_job_config
from training.models import Job
from training.web.views import json_safe


class JobSerializer(serializers.Serializer):
    """A job as `services.job_summary` describes it (the dashboard and the websocket use the same dict)."""

    def to_representation(self, instance: Job) -> dict[str, Any]:
        summary = services.job_summary(instance)
        request = self.context.get("request")
        if request is not None:
            summary["url"] = request.build_absolute_uri(reverse("training:job-detail", args=[instance.pk]))
        return json_safe(summary)  # DRF's strict JSON would fail on a NaN loss with a 500


class JobConfigSerializer(serializers.Serializer):
    """Input: a job config object (the same JSON `run_job --config` reads); output: a JobConfig."""

    def to_internal_value(self, data: Any) -> JobConfig:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: ["the job configuration must be a JSON object"]}
            )
        try:
            return parse_job_config(data)
        except JobConfigError as exc:
            raise serializers.ValidationError(
                {
                    (api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field): [message]
                    for field, message in exc.errors.items()
                }
            ) from None

    def to_representation(self, instance: JobConfig) -> dict[str, Any]:
        return instance.to_dict()
