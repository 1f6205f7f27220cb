"""The fleet websocket (`ws/fleet/`): pushes fleet events to logged-in users; sends nothing else.

Origin is checked before this runs (AllowedHostsOriginValidator in config.asgi). An anonymous socket is
accepted only to be closed at once with code 4401, so the page can tell "log in again" from a network
drop (a refusal before accept would reach the browser as a bare 403 with no code).
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from devices.events import FLEET_GROUP

CLOSE_UNAUTHENTICATED = 4401


class FleetConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen; anything they send is ignored."""

    async def fleet_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
