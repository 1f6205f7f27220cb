"""Extension points of the round engine, as Django signals, so analyses (client influence, attack
success rate, ...) plug in without the engine knowing them.

round_committed(sender=Round, round_id=int, job_id=int) is sent after the commit's transaction is
durable. Receivers must be quick: enqueue a Celery task, don't compute in the sender's worker.
"""

from django.dispatch import Signal

round_committed = Signal()
