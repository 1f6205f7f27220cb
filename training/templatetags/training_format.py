"""Number formats the job pages share (the JS formats live values the same way)."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def percent(value: Any, digits: int = 1) -> str:
    """0.9213 → '92.1%'; None or junk → '–' (a job before its first committed round)."""
    try:
        return f"{float(value) * 100:.{int(digits)}f}%"
    except (TypeError, ValueError):
        return "–"


@register.filter
def params(value: Any) -> str:
    """{'mu': 0.01, 'server_lr': 1.0} → 'mu=0.01, server_lr=1.0' (a job's algorithm/aggregator knobs)."""
    if not isinstance(value, dict):
        return ""
    return ", ".join(f"{key}={item}" for key, item in value.items())


@register.filter
def metric_value(value: Any, metric: str) -> str:
    """A job's accuracy as a percentage, or its AUC (metric "AUC") with three decimals; '–' when absent."""
    if metric != "AUC":
        return percent(value)
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "–"
