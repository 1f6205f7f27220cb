from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """The composition root of the training app: it wires the rooms together once every app is loaded
    (app modules may only touch models then), so none of them has to import the ones above it."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "training"
    verbose_name = "Federated training"

    def ready(self) -> None:
        from devices.extensions import register_agent_check, register_device_panel  # noqa: PLC0415
        from training.analysis import tasks as analysis_tasks  # noqa: F401, PLC0415
        from training.analysis.hooks import enqueue_round_analysis  # noqa: PLC0415
        from training.engine import (
            export_tasks,  # noqa: F401, PLC0415
            scaffold_notes,  # noqa: PLC0415
        )
        from training.engine import tasks as engine_tasks  # noqa: F401, PLC0415
        from training.engine.runtimes import app as app_runtime  # noqa: PLC0415
        from training.jobs import datasets as stored_datasets  # noqa: PLC0415
        from training.jobs.signals import round_committed  # noqa: PLC0415
        from training.web import device_panel  # noqa: PLC0415

        # The task modules register their tasks with Celery here, in every process (web, workers,
        # commands): training/jobs/dispatch.py sends them by name.
        # The device page shows the phone's federated jobs without devices importing training.
        register_device_panel(device_panel.participation_panel)
        # Health probes of app-mode phones ask their agent over tcp: ("agent not running", "wrong agent
        # secret") without devices knowing the agent's protocol.
        register_agent_check(app_runtime.probe_agent)
        # Stored data sets (uploaded or imported files) as the data set "uploaded", read by id.
        stored_datasets.register_loader()
        round_committed.connect(scaffold_notes.note_ci_resets, dispatch_uid="training.scaffold_ci_resets")
        # Client influence and the declared backdoor test, after every committed round (training queue).
        round_committed.connect(enqueue_round_analysis, dispatch_uid="training.analysis.rounds")
