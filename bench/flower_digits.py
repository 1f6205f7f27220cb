"""Flower's Simulation Engine on bench/simulation.py's task — run by bench/simulation.py inside a throwaway
venv that has `flwr[simulation]` (never the project's venv: Flower is not a project dependency).

The same task as ours: digits, the platform's MLP (training.fl.nets), the same IID partition, 20 clients,
10 per round, E = 1, B = 32, lr 0.05, local training by training.fl.client.client_train, server-side
evaluation on the test set each round. Prints one JSON line: start-up and per-round wall times.

    python bench/flower_digits.py --rounds 20 --clients 20 --per-round 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from flwr.client import ClientApp, NumPyClient  # noqa: PLC0415
    from flwr.common import Context, ndarrays_to_parameters  # noqa: PLC0415
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa: PLC0415
    from flwr.server.strategy import FedAvg  # noqa: PLC0415
    from flwr.simulation import run_simulation  # noqa: PLC0415

    from training.fl.client import ClientTask, client_train  # noqa: PLC0415
    from training.fl.datasets import load_dataset  # noqa: PLC0415
    from training.fl.evaluate import evaluate_weights  # noqa: PLC0415
    from training.fl.nets import initial_weights, model_spec_for  # noqa: PLC0415
    from training.fl.partition import partition_dataset  # noqa: PLC0415

    data = load_dataset("digits", seed=0)
    parts = partition_dataset("iid", data.train, args.clients, seed=1)
    spec = model_spec_for("mlp", input_shape=data.feature_shape, num_classes=data.num_classes)
    names = list(initial_weights(spec, 1))
    init = initial_weights(spec, 1)
    marks: list[float] = []

    def to_weights(arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.asarray(a)) for n, a in zip(names, arrays, strict=True)}

    class Client(NumPyClient):
        def __init__(self, index: int) -> None:
            self.index = index

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
            rows = torch.as_tensor(parts[self.index])
            received = to_weights(parameters)
            task = ClientTask(
                config={"model": spec, "lr": 0.05, "epochs": 1, "batch_size": 32, "seed": self.index},
                received=received,
                x=data.train.x[rows],
                y=data.train.y[rows],
            )
            result = client_train(task)
            new = [(received[n] + result.delta[n]).numpy() for n in names]
            return new, result.num_samples, {}

    def client_fn(context: Context) -> object:
        return Client(int(context.node_config["partition-id"])).to_client()

    def evaluate_fn(server_round: int, parameters: list[np.ndarray], config: dict) -> tuple[float, dict]:
        marks.append(time.perf_counter())
        result = evaluate_weights(spec, to_weights(parameters), data.test.x, data.test.y)
        print(json.dumps({"round": server_round, "accuracy": result.accuracy}), file=sys.stderr, flush=True)
        return result.loss, {"accuracy": result.accuracy}

    fraction = args.per_round / args.clients
    strategy = FedAvg(
        fraction_fit=fraction,
        min_fit_clients=args.per_round,
        min_available_clients=args.clients,
        fraction_evaluate=0.0,
        min_evaluate_clients=0,
        evaluate_fn=evaluate_fn,
        initial_parameters=ndarrays_to_parameters([t.numpy() for t in init.values()]),
    )

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.cpus},
        },
    )
    # marks[0] is the initial evaluation (round 0): start-up ends there; each later mark ends a round.
    rounds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    print(json.dumps({"startup_s": marks[0] - STARTED if marks else None, "round_s": rounds}), flush=True)


if __name__ == "__main__":
    main()
