from django.http import HttpRequest, HttpResponse
from django.urls import path

app_name = "devices"


def fleet(request: HttpRequest) -> HttpResponse:  # placeholder until the fleet page lands
    return HttpResponse("FedFleet")


urlpatterns = [path("", fleet, name="fleet")]
