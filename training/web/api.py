"""REST API for jobs (DRF): list/create, detail, snapshot, pause/resume/cancel.

Same rules as the pages: any authenticated user (session or token) reads, operators write; a new job is
validated by parse_job_config and created by services.create_job. The views are marked
`login_not_required` because DRF authenticates itself (a token client has no session to redirect).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import path
from rest_framework import generics, status
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.roles import is_operator
from training.jobs import access, dispatch, services
from training.models import Job, JobStatus
from training.web.serializers import JobConfigSerializer, JobSerializer
from training.web.views import JOB_ACTIONS, download_onnx, snapshot_with_figures


class IsOperatorOrReadOnly(BasePermission):
    message = "operator permission required"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS or is_operator(request.user)


PERMISSIONS = [IsAuthenticated, IsOperatorOrReadOnly]


class JobListCreate(generics.ListAPIView):
    """GET: jobs, newest first (`?status=running`); POST: a job config object → the new job (201)."""

    permission_classes = PERMISSIONS
    serializer_class = JobSerializer
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[Job]:
        jobs = Job.objects.select_related("owner")
        wanted = self.request.query_params.get("status")
        return jobs.filter(status=wanted) if wanted in JobStatus.values else jobs

    def post(self, request: Request) -> Response:
        config_serializer = JobConfigSerializer(data=request.data)
        config_serializer.is_valid(raise_exception=True)
        job = services.create_job(request.user, config_serializer.validated_data)
        return Response(JobSerializer(job, context={"request": request}).data, status=status.HTTP_201_CREATED)


class JobDetail(generics.RetrieveAPIView):
    permission_classes = PERMISSIONS
    serializer_class = JobSerializer
    queryset = Job.objects.select_related("owner")


class JobSnapshot(APIView):
    """The dashboard's snapshot (services.job_snapshot plus the chart figures)."""

    permission_classes = PERMISSIONS

    def get(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
        return Response(snapshot_with_figures(job))


class JobAction(APIView):
    """POST pause/resume/cancel: 200 with the job, or 409 when the job's status does not allow it."""

    permission_classes = PERMISSIONS
    action_name = ""

    def post(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
        if not access.can_manage(request.user, job):
            return Response({"detail": access.refusal(job)}, status=status.HTTP_403_FORBIDDEN)
        try:
            JOB_ACTIONS[self.action_name](job, request.user)
        except services.JobActionError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        job.refresh_from_db()
        return Response(JobSerializer(job, context={"request": request}).data)


class JobOnnx(APIView):
    """GET the final model as ONNX (404 until it is exported and checked; the snapshot's `onnx` says
    which, with the check's figures); POST (the job's owner or staff) exports it now."""

    permission_classes = PERMISSIONS

    def get(self, request: Request, pk: int) -> Any:
        return download_onnx(request._request, pk)

    def post(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(Job.objects.select_related("owner"), pk=pk)
        if not access.can_manage(request.user, job):
            return Response({"detail": access.refusal(job)}, status=status.HTTP_403_FORBIDDEN)
        if job.status != JobStatus.COMPLETED:
            return Response({"detail": "only a completed job's final model is exported"}, status=409)
        dispatch.export_onnx(job.pk)
        return Response({"detail": "export queued"}, status=status.HTTP_202_ACCEPTED)


def _api(view: Any, **initkwargs: Any) -> Any:
    return login_not_required(view.as_view(**initkwargs))


urlpatterns = [
    path("jobs/", _api(JobListCreate), name="job-list"),
    path("jobs/<int:pk>/", _api(JobDetail), name="job-detail"),
    path("jobs/<int:pk>/snapshot/", _api(JobSnapshot), name="job-snapshot"),
    path("jobs/<int:pk>/model.onnx", _api(JobOnnx), name="job-onnx"),
    *[
        path(f"jobs/<int:pk>/{action}/", _api(JobAction, action_name=action), name=f"job-{action}")
        for action in JOB_ACTIONS
    ],
]
