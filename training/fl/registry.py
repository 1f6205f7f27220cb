"""Strategies by name, with their parameters and defaults — what the job form and `run_job` offer.

Add a strategy with one `StrategySpec` entry in `STRATEGIES` (import lazily inside the factory so that
importing the registry stays cheap). A factory gets the validated parameters (defaults filled in) and the
job's `JobContext` — facts about the job rather than knobs of the algorithm, which some strategies need
(FedLaAvg divides by the number of clients N and needs the local step size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from training.fl.strategy import Strategy


@dataclass(frozen=True)
class JobContext:
    num_clients: int  # N: every client (phone) in the job
    lr: float  # the clients' local step size η
    total_samples: int | None = None  # n: training samples over all clients, when known
    clients_per_round: int | None = None


StrategyFactory = Callable[[Mapping[str, Any], "JobContext | None"], Strategy]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    label: str
    params: Mapping[str, Any]  # parameter -> default (the form's initial values)
    factory: StrategyFactory


def _fedavg(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.aggregators import make_aggregator
    from training.fl.fedavg import FedAvg

    aggregator = make_aggregator(params["aggregator"], params["aggregator_params"])
    return FedAvg(server_lr=float(params["server_lr"]), aggregator=aggregator)


def _fedprox(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.aggregators import make_aggregator
    from training.fl.fedprox import FedProx

    aggregator = make_aggregator(params["aggregator"], params["aggregator_params"])
    return FedProx(mu=float(params["mu"]), server_lr=float(params["server_lr"]), aggregator=aggregator)


def _context_or_placeholder(context: JobContext | None) -> JobContext:
    # Without a job (the job form validating parameters) there is no N or η yet; any valid values do.
    return context if context is not None else JobContext(num_clients=1, lr=1.0)


def _scaffold(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.scaffold import Scaffold

    job = _context_or_placeholder(context)
    return Scaffold(num_clients=job.num_clients, server_lr=float(params["server_lr"]))


def _fedlaavg(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.fedlaavg import FedLaAvg

    job = _context_or_placeholder(context)
    return FedLaAvg(
        num_clients=job.num_clients,
        lr=job.lr,
        total_samples=job.total_samples,
        local_steps=params["local_steps"],
    )


def _fedsubavg(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.fedsubavg import FedSubAvg

    return FedSubAvg(
        row_weight=params["row_weight"], server_lr=float(params["server_lr"]), privacy=params["privacy"]
    )


def _fedavg_full(params: Mapping[str, Any], context: JobContext | None) -> Strategy:
    from training.fl.fedsubavg import FullModelFedAvg

    return FullModelFedAvg(server_lr=float(params["server_lr"]))


_AGGREGATION_DEFAULTS: dict[str, Any] = {"server_lr": 1.0, "aggregator": "mean", "aggregator_params": {}}

STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("fedavg", "FedAvg", dict(_AGGREGATION_DEFAULTS), _fedavg),
        StrategySpec("fedprox", "FedProx", {"mu": 0.01, **_AGGREGATION_DEFAULTS}, _fedprox),
        StrategySpec("scaffold", "SCAFFOLD", {"server_lr": 1.0}, _scaffold),
        StrategySpec("fedlaavg", "FedLaAvg", {"local_steps": 10}, _fedlaavg),
        # CTR submodel jobs (ALGORITHMS.md §6) and their full-model baseline.
        StrategySpec(
            "fedsubavg",
            "FedSubAvg (submodels)",
            {"row_weight": "touched", "privacy": "default", "server_lr": 1.0},
            _fedsubavg,
        ),
        StrategySpec("fedavg_full", "FedAvg, full CTR model (baseline)", {"server_lr": 1.0}, _fedavg_full),
    )
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def strategy_defaults(name: str) -> dict[str, Any]:
    return dict(_spec(name).params)


def make_strategy(
    name: str, params: Mapping[str, Any] | None = None, context: JobContext | None = None
) -> Strategy:
    """Build a strategy by name; unknown names or parameters raise ValueError naming them."""
    spec = _spec(name)
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise ValueError(
            f"{name} does not take {', '.join(unknown)} (it takes {', '.join(spec.params) or 'nothing'})"
        )
    try:
        return spec.factory({**spec.params, **given}, context)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{name}: bad parameters: {exc}") from None


def _spec(name: str) -> StrategySpec:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(STRATEGY_NAMES)}") from None
