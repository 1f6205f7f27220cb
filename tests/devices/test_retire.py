"""History is never lost: removing a phone that past jobs name retires it (kept with every record, out of
selection, probing and the fleet list) instead of deleting it; a phone without history is still deleted;
registering its address again brings it back. Through the service, the pages and the REST API."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import ProtectedError
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import services
from devices.models import AvailabilityInterval, Device, DeviceStatus
from training.engine.selection import eligible_devices
from training.jobs.config import DEFAULTS
from training.models import ClientInfluence, ClientResult, Exclusion, Job, Participant, Round

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_probe_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("devices.views.enqueue_probe", lambda *args, **kwargs: None)
    monkeypatch.setattr("devices.api.enqueue_probe", lambda *args, **kwargs: None)


def register(name: str, address: str) -> Device:
    device = services.create_device(services.DeviceSettings(name=name, transport="tcp", address=address))
    services.set_status(device.pk, DeviceStatus.ONLINE)
    return Device.objects.get(pk=device.pk)


@pytest.fixture
def veteran(operator_user: Any) -> Device:
    """A phone that took part in 3 finished jobs: participant, result, influence and exclusion rows."""
    device = register("veteran", "10.0.0.7:5555")
    for number in range(3):
        job = Job.objects.create(
            name=f"job-{number}", owner=operator_user, status="completed", config=DEFAULTS.to_dict(),
            algorithm="fedavg", dataset="digits", model_name="mlp", rounds_total=1, clients_per_round=1,
        )  # fmt: skip
        rnd = Round.objects.create(
            job=job, number=1, status="committed", goal=1, min_reports=1, deadline_at=timezone.now()
        )
        participant = Participant.objects.create(
            job=job, device=device, client_index=0, num_samples=45, shard_sha256="0" * 64
        )
        ClientResult.objects.create(job=job, round=rnd, device=device, state="reported", num_samples=45)
        ClientInfluence.objects.create(
            job=job, device=device, round_number=1, loss_first_order=0.1, params_norm=1.0
        )
        Exclusion.objects.create(
            job=job, participant=participant, action="exclude", round_number=1, reason="test"
        )
    return device


def records_of(device: Device) -> tuple[int, int, int, int]:
    return (
        Participant.objects.filter(device=device).count(),
        ClientResult.objects.filter(device=device).count(),
        ClientInfluence.objects.filter(device=device).count(),
        Exclusion.objects.filter(participant__device=device).count(),
    )


# --- the service -------------------------------------------------------------------------------------
def test_a_phone_with_history_is_retired_and_every_record_kept(veteran: Device) -> None:
    assert services.device_history(veteran.pk) == services.History(records=9, jobs=3)
    removal = services.remove_device(veteran.pk)
    assert removal.retired and removal.outcome == "retired"
    assert removal.message == "veteran retired: it took part in 3 jobs; its records are kept."
    veteran.refresh_from_db()
    assert veteran.status == DeviceStatus.RETIRED and veteran.retired
    assert records_of(veteran) == (3, 3, 3, 3)
    current = AvailabilityInterval.objects.get(device=veteran, ended_at__isnull=True)
    assert current.status == DeviceStatus.RETIRED
    # Removing it again changes nothing and says so the same way.
    assert services.remove_device(veteran.pk).retired and records_of(veteran) == (3, 3, 3, 3)


def test_a_phone_without_history_is_still_deleted() -> None:
    device = register("newcomer", "10.0.0.8:5555")
    removal = services.remove_device(device.pk)
    assert not removal.retired and removal.message == "newcomer removed from the lab."
    assert not Device.objects.filter(pk=device.pk).exists()
    assert not AvailabilityInterval.objects.filter(device_id=device.pk).exists()  # its own telemetry goes


def test_history_written_between_the_check_and_the_delete_retires(
    veteran: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = services.device_history
    answers = iter([services.History(records=0, jobs=0)])
    monkeypatch.setattr(services, "device_history", lambda device_id: next(answers, None) or real(device_id))
    removal = services.remove_device(veteran.pk)  # the delete meets PROTECT: retired instead
    assert removal.retired and removal.history.jobs == 3 and records_of(veteran) == (3, 3, 3, 3)


def test_the_database_refuses_to_cascade_into_history(veteran: Device) -> None:
    with pytest.raises(ProtectedError):
        Device.objects.filter(pk=veteran.pk).delete()
    # A job can still be deleted with its own rows; then the phone has no history left.
    Job.objects.all().delete()
    assert services.device_history(veteran.pk).records == 0
    assert not services.remove_device(veteran.pk).retired


def test_a_retired_phone_is_never_selected_probed_or_revived_by_a_probe(veteran: Device) -> None:
    other = register("other", "10.0.0.9:5555")
    assert {d.pk for d in eligible_devices(DEFAULTS)} == {veteran.pk, other.pk}
    services.remove_device(veteran.pk)
    assert [d.pk for d in eligible_devices(DEFAULTS)] == [other.pk]  # the engine's selection query
    assert [pk for pk, _ in services.probe_candidates()] == [other.pk]
    assert services.claim_probe(veteran.pk) is None
    # A probe that was already talking to it, or a job letting it go, cannot bring it back online.
    services.apply_probe_result(veteran.pk, DeviceStatus.ONLINE)
    services.set_status(veteran.pk, DeviceStatus.ONLINE, reason="released by job 1")
    veteran.refresh_from_db()
    assert veteran.status == DeviceStatus.RETIRED
    with pytest.raises(ValueError, match="remove_device"):
        services.set_status(other.pk, DeviceStatus.RETIRED)


def test_a_leased_phone_is_neither_deleted_nor_retired(veteran: Device) -> None:
    Device.objects.filter(pk=veteran.pk).update(lease_job_id=1)
    with pytest.raises(services.DeviceInUse):
        services.remove_device(veteran.pk)
    assert Device.objects.get(pk=veteran.pk).status == DeviceStatus.ONLINE


def test_registering_the_address_again_brings_it_back(veteran: Device) -> None:
    services.remove_device(veteran.pk)
    again = services.register_or_update_device(name="veteran", transport="tcp", address="10.0.0.7:5555")
    assert again.pk == veteran.pk and again.status == DeviceStatus.UNKNOWN
    assert records_of(again) == (3, 3, 3, 3)
    services.remove_device(veteran.pk)
    renamed = services.create_device(
        services.DeviceSettings(name="veteran-2", transport="tcp", address="10.0.0.7:5555")
    )
    assert renamed.pk == veteran.pk and renamed.name == "veteran-2" and renamed.status == DeviceStatus.UNKNOWN


# --- pages ---------------------------------------------------------------------------------------------
def test_fleet_page_hides_retired_phones_unless_asked(viewer_client: Any, veteran: Device) -> None:
    register("other", "10.0.0.9:5555")
    services.remove_device(veteran.pk)
    fleet = viewer_client.get(reverse("devices:fleet")).content.decode()
    assert "other" in fleet and ">veteran<" not in fleet and "1 phone" in fleet
    assert 'name="show_retired"' in fleet
    shown = viewer_client.get(reverse("devices:fleet"), {"show_retired": "1"}).content.decode()
    assert ">veteran<" in shown and "Retired" in shown
    snapshot = reverse("devices:fleet-snapshot")
    assert [d["name"] for d in viewer_client.get(snapshot).json()["devices"]] == ["other"]
    assert [d["name"] for d in viewer_client.get(snapshot, {"show_retired": "1"}).json()["devices"]] == [
        "other",
        "veteran",
    ]
    assert [d["name"] for d in viewer_client.get(snapshot, {"status": "retired"}).json()["devices"]] == [
        "veteran"
    ]
    assert viewer_client.get(snapshot).json()["counts"]["retired"] == 1
    detail = viewer_client.get(reverse("devices:detail", args=[veteran.pk])).content.decode()
    assert 'id="retired-note"' in detail


def test_fleet_page_links_to_retired_phones_when_none_is_left(viewer_client: Any, veteran: Device) -> None:
    services.remove_device(veteran.pk)
    fleet = viewer_client.get(reverse("devices:fleet")).content.decode()
    assert '<a href="?show_retired=1">Show 1 retired</a>' in fleet


def test_remove_page_says_it_will_retire_then_does(operator_client: Any, veteran: Device) -> None:
    url = reverse("devices:delete", args=[veteran.pk])
    confirm = operator_client.get(url).content.decode()
    assert (
        "took part in 3 jobs, so it will be" in confirm and 'id="confirm-removal">Retire</button>' in confirm
    )
    done = operator_client.post(url, follow=True)
    assert "veteran retired: it took part in 3 jobs; its records are kept." in done.content.decode()
    assert Device.objects.get(pk=veteran.pk).status == DeviceStatus.RETIRED


def test_remove_page_for_a_phone_without_history_deletes(operator_client: Any) -> None:
    device = register("newcomer", "10.0.0.8:5555")
    url = reverse("devices:delete", args=[device.pk])
    assert "has no jobs in its past: it is deleted" in operator_client.get(url).content.decode()
    done = operator_client.post(url, follow=True)
    assert "newcomer removed from the lab." in done.content.decode()
    assert not Device.objects.filter(pk=device.pk).exists()


def test_register_page_brings_a_retired_phone_back(operator_client: Any, veteran: Device) -> None:
    services.remove_device(veteran.pk)
    form = {"name": "veteran", "transport": "tcp", "address": "10.0.0.7:5555", "tags": "",
            "agent_python": "python3", "work_dir": "/data/local/tmp/fedfleet/", "worker_queue": ""}  # fmt: skip
    response = operator_client.post(reverse("devices:register"), form, follow=True)
    assert response.redirect_chain[-1][0] == reverse("devices:detail", args=[veteran.pk])
    assert (
        "veteran was retired; registered again, it is back in the lab with its history"
        in response.content.decode()
    )
    assert Device.objects.get(pk=veteran.pk).status == DeviceStatus.UNKNOWN
    assert Device.objects.count() == 1
    # A live phone's address is still refused, as before.
    register("other", "10.0.0.9:5555")
    taken = operator_client.post(
        reverse("devices:register"), {**form, "name": "x", "address": "10.0.0.9:5555"}
    )
    assert "10.0.0.9:5555 is already registered as &#x27;other&#x27;." in taken.content.decode()


# --- REST API --------------------------------------------------------------------------------------------
def api(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_api_delete_retires_and_says_so(operator_user: Any, veteran: Device) -> None:
    client = api(operator_user)
    response = client.delete(f"/api/devices/{veteran.pk}/")
    assert response.status_code == 200
    assert response.json() == {
        "result": "retired",
        "detail": "veteran retired: it took part in 3 jobs; its records are kept.",
        "jobs": 3,
        "records": 9,
    }
    assert records_of(veteran) == (3, 3, 3, 3)
    # Hidden from the list, still at its own URL, listed when asked for.
    assert client.get("/api/devices/").json()["results"] == []
    assert client.get(f"/api/devices/{veteran.pk}/").json()["status"] == "retired"
    assert [d["name"] for d in client.get("/api/devices/", {"show_retired": "true"}).json()["results"]] == [
        "veteran"
    ]
    # Registering the address again over the API brings the same phone back.
    again = client.post("/api/devices/", {"name": "veteran", "address": "10.0.0.7:5555"}, format="json")
    assert (
        again.status_code == 201 and again.json()["id"] == veteran.pk and again.json()["status"] == "unknown"
    )


def test_api_delete_of_a_phone_without_history_deletes(operator_user: Any) -> None:
    device = register("newcomer", "10.0.0.8:5555")
    response = api(operator_user).delete(f"/api/devices/{device.pk}/")
    assert response.status_code == 200 and response.json()["result"] == "deleted"
    assert response.json()["jobs"] == 0 and not Device.objects.filter(pk=device.pk).exists()
