from django.urls import path

from training.web import dataset_views, views

app_name = "training"

urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("new/", views.job_create, name="job-create"),
    path("eligible.json", views.eligible_phones, name="eligible-phones"),
    path("model-size.json", views.model_size_json, name="model-size"),
    path("compare/", views.job_compare, name="job-compare"),
    path("<int:pk>/", views.job_detail, name="job-detail"),
    path("<int:pk>/snapshot.json", views.job_snapshot, name="job-snapshot"),
    path("<int:pk>/pause/", views.job_action, {"action": "pause"}, name="job-pause"),
    path("<int:pk>/resume/", views.job_action, {"action": "resume"}, name="job-resume"),
    path("<int:pk>/cancel/", views.job_action, {"action": "cancel"}, name="job-cancel"),
    path(
        "<int:pk>/phones/<int:device_id>/exclude/",
        views.participant_exclusion,
        {"action": "exclude"},
        name="participant-exclude",
    ),
    path(
        "<int:pk>/phones/<int:device_id>/include/",
        views.participant_exclusion,
        {"action": "include"},
        name="participant-include",
    ),
    path("<int:pk>/exact-loo/", views.run_exact_loo, name="job-loo"),
    path("<int:pk>/twin/", views.job_twin, name="job-twin"),
    path("<int:pk>/export.csv", views.export_csv, name="job-export-csv"),
    path("<int:pk>/export.json", views.export_json, name="job-export-json"),
    path("<int:pk>/model.safetensors", views.download_model, name="job-model"),
    path("datasets/", dataset_views.dataset_list, name="dataset-list"),
    path("datasets/upload/", dataset_views.dataset_upload, name="dataset-upload"),
    path("datasets/<int:pk>/", dataset_views.dataset_detail, name="dataset-detail"),
    path("datasets/<int:pk>/delete/", dataset_views.dataset_delete, name="dataset-delete"),
    path("<int:pk>/model.onnx", views.download_onnx, name="job-onnx"),
    path("<int:pk>/export-onnx/", views.request_onnx_export, name="job-export-onnx"),
]
