"""The fleet filter, shared by the fleet page, its JSON snapshot and the REST API.

Retired phones (kept because past jobs name them) are left out unless `show_retired` is set or the
status asked for is `retired`."""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from devices.models import Device, DeviceStatus


class DeviceFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices, empty_label="Any status")
    tag = django_filters.CharFilter(method="filter_tag", label="Tag")
    q = django_filters.CharFilter(method="filter_text", label="Search")
    # A checkbox: ?show_retired=1 (or true/on) shows them; absent hides them.
    show_retired = django_filters.BooleanFilter(
        method="filter_show_retired", widget=forms.CheckboxInput, label="Show retired"
    )

    class Meta:
        model = Device
        fields = ["status", "tag", "q", "show_retired"]

    @property
    def qs(self) -> QuerySet[Device]:
        queryset = super().qs
        data = self.form.cleaned_data if self.is_bound and self.form.is_valid() else {}
        if not data.get("show_retired") and data.get("status") != DeviceStatus.RETIRED:
            queryset = queryset.exclude(status=DeviceStatus.RETIRED)
        return queryset

    def filter_show_retired(self, queryset: QuerySet[Device], name: str, value: bool) -> QuerySet[Device]:
        return queryset  # the exclusion (or not) happens in qs, also when the parameter is absent

    def filter_tag(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        return queryset.filter(tags__name=value.strip().lower()).distinct()

    def filter_text(self, queryset: QuerySet[Device], name: str, value: str) -> QuerySet[Device]:
        text = value.strip()
        return queryset.filter(
            Q(name__icontains=text) | Q(model__icontains=text) | Q(address__icontains=text)
        ).distinct()
