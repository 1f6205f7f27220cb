"""FedFleet's Django project package (named config/, not platform/, which would shadow the stdlib)."""

from config.celery import app as celery_app

__all__ = ["celery_app"]
