"""The job record and its one writer: everything the rest of training/ stands on.

    config.py    a job's configuration: parsed, validated, defaults (form, API and run_job share it)
    services.py  the one place that writes jobs (status, log, exclusions) and emits their events
    events.py    job events to the dashboard's websocket group, sent after commit
    signals.py   round_committed, the engine's extension point (analyses plug in there)
    leases.py    which phones a job holds (a phone serves one job at a time)
    storage.py   where a job's files live: shards, checkpoints, round dirs — on the server and on phones
    dispatch.py  the one place that queues Celery tasks, by name, so nothing here imports the engine

The models stay in training/models.py (Django's app convention; the app label and migrations are
unchanged).
"""
