"""FedProx (Li et al., MLSys 2020), ALGORITHMS.md §2.

The server side is FedAvg's: random selection and the sample-weighted mean. What changes is the client:
its config carries μ and the phones run the "fedprox" client (local objective F_k(w) + μ/2‖w − w_t‖²).
Stragglers keep their partial work: an update from a phone that stopped early at its step budget or
deadline is aggregated like any other, weighted by its sample count n_k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from training.fl.fedavg import FedAvg
from training.fl.strategy import Aggregator

DEFAULT_MU = 0.01


class FedProx(FedAvg):
    name = "fedprox"
    client_algorithm = "fedprox"

    def __init__(
        self, *, mu: float = DEFAULT_MU, server_lr: float = 1.0, aggregator: Aggregator | None = None
    ) -> None:
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be >= 0, got {mu}")
        super().__init__(server_lr=server_lr, aggregator=aggregator)
        self.mu = float(mu)

    def client_config(self, base_config: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().client_config(base_config), "mu": self.mu}
