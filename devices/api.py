"""The devices REST API (list/create/detail/delete) for scripts: token or session authentication,
the same filters as the fleet page, the same validation as the register form, and the same rule for
writes (operators only). DELETE retires a phone that past jobs name instead of deleting it, and says so."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import is_operator
from devices import services
from devices.filters import DeviceFilterSet
from devices.models import Device
from devices.serializers import DeviceSerializer
from devices.tasks import enqueue_probe


class IsOperatorOrReadOnly(BasePermission):
    message = "Only operators can register or remove phones."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in SAFE_METHODS or is_operator(request.user)


class DeviceViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Device.objects.prefetch_related("tags")
    serializer_class = DeviceSerializer
    permission_classes = [IsOperatorOrReadOnly]
    filterset_class = DeviceFilterSet

    def perform_create(self, serializer: DeviceSerializer) -> None:
        try:
            device = serializer.save()
        except ValidationError as exc:  # lost a race with another registration
            raise ApiValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else exc.messages
            ) from exc
        transaction.on_commit(lambda: enqueue_probe(device.pk, device.worker_queue))

    def filter_queryset(self, queryset: QuerySet[Device]) -> QuerySet[Device]:
        # The fleet filters (which hide retired phones) are for the list; a phone's own URL always works.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """200 with what happened: {"result": "deleted"} for a phone without history, {"result":
        "retired", "jobs": N} for one that past jobs name (kept, hidden, never selected); 409 if leased."""
        device = self.get_object()
        try:
            removal = services.remove_device(device.pk)
        except services.DeviceInUse as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(
            {
                "result": removal.outcome,
                "detail": removal.message,
                "jobs": removal.history.jobs,
                "records": removal.history.records,
            }
        )
