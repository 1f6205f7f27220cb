from django.apps import AppConfig


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"
    verbose_name = "Federated training"

    def ready(self) -> None:
        # Imported here: app modules may only touch models once every app is loaded.
        from devices.extensions import register_device_panel  # noqa: PLC0415
        from training import device_panel, scaffold_notes  # noqa: PLC0415
        from training.signals import round_committed  # noqa: PLC0415

        # The device page shows the phone's federated jobs without devices importing training.
        register_device_panel(device_panel.participation_panel)
        round_committed.connect(scaffold_notes.note_ci_resets, dispatch_uid="training.scaffold_ci_resets")
        # Client influence and the declared backdoor test, after every committed round (training queue).
        from training.analysis.hooks import enqueue_round_analysis  # noqa: PLC0415

        round_committed.connect(enqueue_round_analysis, dispatch_uid="training.analysis.rounds")
