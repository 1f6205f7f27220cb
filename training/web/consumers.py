"""The job dashboard's websocket: forwards the job's live events (training.events) to the browser.

The socket only listens; everything it shows is also in the HTTP snapshot, which the page reloads on every
(re)connect, so a dropped connection loses nothing. Refusals are sent as close codes after accepting, so
the page can tell "log in again" (4401) or "no such job" (4404) from a network drop and stop retrying.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from training.jobs.events import job_group
from training.models import Job

CLOSE_UNAUTHENTICATED = 4401
CLOSE_UNKNOWN_JOB = 4404


@database_sync_to_async
def _job_exists(job_id: int) -> bool:
    return Job.objects.filter(pk=job_id).exists()


class JobConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await _job_exists(job_id):
            await self.close(code=CLOSE_UNKNOWN_JOB)
            return
        self.group = job_group(job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing; anything received is ignored rather than trusted."""

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
