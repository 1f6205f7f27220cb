from django.urls import path

from devices.consumers import FleetConsumer

websocket_urlpatterns = [path("ws/fleet/", FleetConsumer.as_asgi())]
