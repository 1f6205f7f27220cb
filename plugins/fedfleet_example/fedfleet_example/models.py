"""A residual MLP, declared as a plain mapping: this module imports only torch, because it runs on the
phones too (agent.pyz carries it) and needs nothing from FedFleet to declare itself."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ResidualBlock(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.inner = nn.Sequential(
            nn.Linear(width, width), ACTIVATIONS[activation](), nn.Linear(width, width)
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.inner(x))


class ResidualMLP(nn.Module):
    """Flatten, project to `width`, `blocks` residual blocks, then a linear classifier. No buffers (no
    batch norm): FedFleet's weights are exactly a model's float32 parameters."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, *, width: int, blocks: int, activation: str
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), ACTIVATIONS[activation]()
        )
        self.blocks = nn.Sequential(*(ResidualBlock(width, activation) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build(
    input_shape: Sequence[int], num_classes: int, *, width: int, blocks: int, activation: str
) -> nn.Module:
    return ResidualMLP(input_shape, num_classes, width=width, blocks=blocks, activation=activation)


RESIDUAL_MLP = {
    "build": build,
    "label": "Residual MLP (example plug-in)",
    "help": "An MLP with residual blocks of constant width.",
    "params": [
        {
            "name": "width",
            "type": "int",
            "default": 64,
            "min": 1,
            "max": 2048,
            "help": "width of every layer",
        },
        {"name": "blocks", "type": "int", "default": 2, "min": 0, "max": 16, "help": "residual blocks"},
        {
            "name": "activation",
            "type": "str",
            "default": "relu",
            "choices": ["relu", "tanh"],
            "help": "non-linearity",
        },
    ],
}
