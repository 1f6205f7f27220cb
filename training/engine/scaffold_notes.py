"""Notes in a SCAFFOLD job's log when a phone lost its control variate c_i.

c_i lives only on the phone (ALGORITHMS.md §3). A phone that was wiped, replaced or had its agent
reinstalled starts again from c_i = 0 and says so in its result (`scaffold_ci_reset: 1`); nothing can
recover the lost c_i, so a person should at least see that it happened, and to which phone.
Connected to training.signals.round_committed in TrainingConfig.ready().
"""

from __future__ import annotations

from typing import Any

from training.jobs import services
from training.models import ClientResult, ClientState, LogLevel, Round

# training.fl.scaffold.CI_RESET_METRIC, spelled out: importing the strategy would load torch into every web
# process that starts Django (a test checks the two agree).
CI_RESET_METRIC = "scaffold_ci_reset"


def phones_that_reset(round_id: int) -> list[str]:
    """Names of the phones whose aggregated update in this round started from a reset c_i."""
    results = ClientResult.objects.filter(round_id=round_id, state=ClientState.REPORTED).select_related(
        "device"
    )
    return sorted(
        r.device.name
        for r in results
        if isinstance(r.metrics.get(CI_RESET_METRIC), int | float) and r.metrics[CI_RESET_METRIC] > 0
    )


def note_ci_resets(sender: Any, *, round_id: int, job_id: int, **_: Any) -> None:
    names = phones_that_reset(round_id)
    if not names:
        return
    number = Round.objects.filter(pk=round_id).values_list("number", flat=True).first()
    services.log(
        job_id,
        f"round {number}: {len(names)} phone(s) had lost their SCAFFOLD control variate c_i (wiped, new "
        f"agent or unreadable file) and restarted from c_i = 0: {', '.join(names)}",
        level=LogLevel.WARNING,
        round_number=number,
    )
