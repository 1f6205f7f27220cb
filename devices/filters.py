"""The fleet filter, shared by the fleet page, its JSON snapshot and the REST API."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from devices.models import Device, DeviceStatus


class DeviceFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices, empty_label="Any status")
    tag = django_filters.CharFilter(method="filter_tag", label="Tag")
    q = django_filters.CharFilter(method="filter_text", label="Search")

    class Meta:
        model = Device
        fields = ["status", "tag", "q"]

    def filter_tag(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.filter(tags__name=value.strip().lower()).distinct()

    def filter_text(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        text = value.strip()
        return queryset.filter(
            Q(name__icontains=text) | Q(model__icontains=text) | Q(address__icontains=text)
        ).distinct()
