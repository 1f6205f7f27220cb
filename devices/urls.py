from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("snapshot.json", views.fleet_snapshot, name="fleet-snapshot"),
    path("register/", views.register, name="register"),
    path("test-connection/", views.test_connection, name="test-connection"),
    path("adb-key/", views.adb_key, name="adb-key"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/edit/", views.edit, name="edit"),
    path("<int:pk>/delete/", views.delete, name="delete"),
]
