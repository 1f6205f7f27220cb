"""The job websocket: logged-in users get the job's events; anonymous users and unknown jobs are refused.

Uses Channels' InMemoryChannelLayer (this unit test only) and the real ASGI stack from config.asgi, so the
URL route, the session auth middleware and the origin check are the production ones.
"""

# ruff: noqa: F811 - fixtures imported from web_factories are redefined as test parameters by design

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction

from training.jobs.events import send_job_event
from training.models import Job
from training.web.consumers import CLOSE_UNAUTHENTICATED, CLOSE_UNKNOWN_JOB, JobConsumer

from .web_factories import make_job, operator, viewer  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT_S = 3


@pytest.fixture(autouse=True)
def in_memory_layer(settings: Any) -> Any:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def communicator(job_id: int, user: Any) -> WebsocketCommunicator:
    app = JobConsumer.as_asgi()
    comm = WebsocketCommunicator(app, f"/ws/jobs/{job_id}/")
    comm.scope["user"] = user
    comm.scope["url_route"] = {"kwargs": {"job_id": job_id}}
    return comm


def send_in_committed_transaction(job_id: int, event_type: str, **payload: Any) -> None:
    with transaction.atomic():
        send_job_event(job_id, event_type, **payload)


def test_logged_in_viewer_receives_job_events(viewer: Any, operator: Any) -> None:
    async def scenario() -> None:
        job: Job = await sync_to_async(make_job)(operator)
        comm = communicator(job.pk, viewer)
        connected, _ = await comm.connect(timeout=TIMEOUT_S)
        assert connected
        progress = {"round": 2, "device": 7, "epoch": 1, "step": 4, "steps_total": 10, "loss": 0.25}
        await sync_to_async(send_in_committed_transaction)(job.pk, "device.progress", **progress)
        message = await comm.receive_json_from(timeout=TIMEOUT_S)
        assert message == {"type": "device.progress", "job": job.pk, **progress}
        await comm.disconnect()

    async_to_sync(scenario)()


def test_events_of_other_jobs_are_not_delivered(viewer: Any, operator: Any) -> None:
    async def scenario() -> None:
        watched, other = await sync_to_async(lambda: (make_job(operator), make_job(operator)))()
        comm = communicator(watched.pk, viewer)
        assert (await comm.connect(timeout=TIMEOUT_S))[0]
        await sync_to_async(send_in_committed_transaction)(
            other.pk, "job.log", entry={"message": "not yours"}
        )
        await sync_to_async(send_in_committed_transaction)(watched.pk, "job.log", entry={"message": "yours"})
        message = await comm.receive_json_from(timeout=TIMEOUT_S)
        assert message["entry"]["message"] == "yours"
        assert await comm.receive_nothing(timeout=0.1)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_event_in_a_rolled_back_transaction_is_never_sent(viewer: Any, operator: Any) -> None:
    async def scenario() -> None:
        job: Job = await sync_to_async(make_job)(operator)
        comm = communicator(job.pk, viewer)
        assert (await comm.connect(timeout=TIMEOUT_S))[0]

        def send_then_roll_back() -> None:
            with pytest.raises(RuntimeError), transaction.atomic():
                send_job_event(job.pk, "job.status", job={"status": "ghost"})
                raise RuntimeError("roll back")

        await sync_to_async(send_then_roll_back)()
        assert await comm.receive_nothing(timeout=0.2)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_anonymous_is_closed_with_4401(operator: Any) -> None:
    async def scenario() -> None:
        job: Job = await sync_to_async(make_job)(operator)
        comm = communicator(job.pk, AnonymousUser())
        await comm.connect(timeout=TIMEOUT_S)
        assert await comm.receive_output(timeout=TIMEOUT_S) == {
            "type": "websocket.close",
            "code": CLOSE_UNAUTHENTICATED,
        }

    async_to_sync(scenario)()


def test_unknown_job_is_closed_with_4404(viewer: Any) -> None:
    async def scenario() -> None:
        comm = communicator(987654, viewer)
        await comm.connect(timeout=TIMEOUT_S)
        assert await comm.receive_output(timeout=TIMEOUT_S) == {
            "type": "websocket.close",
            "code": CLOSE_UNKNOWN_JOB,
        }

    async_to_sync(scenario)()


def test_route_is_served_by_the_asgi_application(viewer: Any) -> None:
    """ws/jobs/<id>/ is reachable through config.asgi (routing collected from training.routing)."""

    async def scenario() -> None:
        from config.asgi import application

        comm = WebsocketCommunicator(
            application,
            "/ws/jobs/987654/",
            headers=[(b"origin", b"http://localhost"), (b"host", b"localhost")],
        )
        connected, _ = await comm.connect(timeout=TIMEOUT_S)
        assert connected  # accepted only to be closed with a code the page understands
        close = await comm.receive_output(timeout=TIMEOUT_S)
        assert close == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}  # no session cookie
        assert "localhost" in django_settings.ALLOWED_HOSTS

    async_to_sync(scenario)()
