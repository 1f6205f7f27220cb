"""The Celery app `fedfleet`: queues, routes, reliability options and the beat schedule.

Queues:
  devices   ADB I/O (probes, pushes, training runs on phones): a threads pool, since it mostly waits.
  training  aggregation, evaluation, influence: CPU-bound, a prefork pool.
  devices.<host>  optional per-host queues: a machine with USB phones runs a worker with
                  `-Q devices.<host>` and phones whose Device.worker_queue names it are served there
                  (see device_queue()).
Tasks take ids and are idempotent, so they are acknowledged late: a worker that dies mid-task leaves
the message for another worker instead of losing it.

Recovery without a person: Redis keeps the queues across a crash (config/local_redis.py), workers
reconnect after a broker outage (config/broker.py), a message taken but never acknowledged comes back
after the visibility timeout, and beat runs the round engine's watchdog every few seconds, which
re-drives what lost tasks left behind from the database.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from config.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

DEVICES_QUEUE = "devices"
TRAINING_QUEUE = "training"
# Read here (not from django.conf) because this module is imported while settings are still loading.
PROBE_INTERVAL_S = env_int("FEDFLEET_PROBE_INTERVAL_S", 10, minimum=1)

# Redis hands a message that was taken but not acknowledged to another worker after the visibility
# timeout: it cannot tell a dead worker from a slow one, so the timeout must outlast the longest task or
# a task still running is delivered twice. The longest are a phone's training run — the round deadline,
# up to 24 h, hard-limited at 24 h 11 min (run_client's time limit) — exact leave-one-out (3 h 1 min), and
# a round's deadline close, sent with a countdown of up to 24 h that a worker holds unacknowledged.
# 26 h leaves almost 2 h for a message's wait in a worker's prefetch buffer (the clock starts when the
# worker takes it, not when the task starts) and for clocks of different hosts (the worker that restores
# a message compares its own clock with the taker's). The price: the
# message of a SIGKILLed worker comes back only after 26 h; lost rounds do not wait for it — the watchdog
# below re-drives them from the database. Tests lower it to watch a redelivery in seconds.
VISIBILITY_TIMEOUT_S = env_int("FEDFLEET_BROKER_VISIBILITY_TIMEOUT_S", 26 * 3600, minimum=1)
# The round engine's watchdog: closes rounds past their deadline, re-sends lost round and client tasks.
# A tick that waited longer than one period (the training worker was down or busy) is stale — the next is
# already queued — so it expires: a worker coming back after an outage runs one watchdog, not a backlog.
WATCHDOG_INTERVAL_S = 5.0

app = Celery("fedfleet", amqp="config.broker:BrokerAMQP")
app.config_from_object("django.conf:settings", namespace="CELERY")


def device_queue(worker_queue: str = "") -> str:
    """The queue for a phone's ADB work: its host's queue when it has one, else the shared one.

    Use it when sending a task for one phone: `task.apply_async(args, queue=device_queue(d.worker_queue))`
    (an explicit `queue=` wins over task_routes).
    """
    return worker_queue or DEVICES_QUEUE


def route_by_module(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """devices.tasks.* -> devices, training.tasks.* -> training; anything else -> Celery's default."""
    if name.startswith("devices."):
        return {"queue": DEVICES_QUEUE}
    if name.startswith("training."):
        return {"queue": TRAINING_QUEUE}
    return None


app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=3600,
    task_queues=tuple(
        Queue(name, Exchange(name), routing_key=name) for name in (DEVICES_QUEUE, TRAINING_QUEUE)
    ),
    task_default_queue=DEVICES_QUEUE,
    task_routes=(route_by_module,),
    task_create_missing_queues=True,  # devices.<host> queues appear when first used
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Defaults; tasks that legitimately run long (a training round on a phone) set their own limits.
    task_soft_time_limit=600,
    task_time_limit=660,
    broker_connection_retry_on_startup=True,
    # A task running when Redis goes away goes on and acknowledges once the worker has reconnected
    # (config/broker.py keeps that possible). True would cancel it, and its message could only come
    # back after the visibility timeout. Said explicitly: Celery 6 changes the default.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    # No result_backend_transport_options: the Redis result backend stores results with SET/GET and
    # pub/sub; it takes no messages and acknowledges none, so no visibility timeout applies to it.
    # Publishing while Redis is down should fail fast, not hang a web request.
    task_publish_retry_policy={
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    },
    worker_hijack_root_logger=False,
    timezone="UTC",
)

app.conf.beat_schedule = {
    "probe-fleet": {
        "task": "devices.tasks.probe_fleet",
        "schedule": float(PROBE_INTERVAL_S),
        # A fan-out that waited longer than one period is stale: the next one is already on its way.
        "options": {"expires": float(PROBE_INTERVAL_S)},
    },
    "training-watchdog": {
        "task": "training.tasks.watchdog",
        "schedule": WATCHDOG_INTERVAL_S,
        "options": {"expires": WATCHDOG_INTERVAL_S},
    },
    "purge-old-telemetry": {
        "task": "devices.tasks.purge_old_telemetry",
        "schedule": 3600.0,
    },
}

app.autodiscover_tasks()
