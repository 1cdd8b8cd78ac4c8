"""The initial global model of a federation, from its spec alone, without torch.

The coordinator owns the global model from round 1: it builds the initial weights here
(numpy only, so the ServerApp never imports torch) and sends them with the first train
instruction, as Flower strategies do with initial parameters. Secure aggregation needs
this: nodes send masked *updates* relative to the model they received, and the coordinator
adds the decoded mean update to the model it holds.

Initialisation follows ``torch.nn.Linear``'s default (weights and biases uniform in
``±1/sqrt(fan_in)``), drawn from a numpy generator seeded with the federation's public seed,
so every party derives the same model from the same spec.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from lepton_fl.config import FederationSpec, ModelConfig
from lepton_fl.datasets import get_task

Shapes = list[tuple[int, ...]]


def task_dimensions(task: str) -> tuple[int, int]:
    """``(num_features, num_classes)`` of a registered task, from its agreed schema."""
    info = get_task(task)
    if info.schema is None:
        raise ValueError(f"Task {task!r} is not tabular: it has no feature schema.")
    return info.schema.num_features, info.num_classes


def weight_shapes(model: ModelConfig, *, num_features: int, num_classes: int) -> Shapes:
    """Tensor shapes in state_dict order (each Linear's weight ``(out, in)``, then bias)."""
    if model.name != "tabular_mlp":
        raise ValueError(f"No initialiser for model {model.name!r}.")
    shapes: Shapes = []
    width = num_features
    for size in (*model.hidden, num_classes):
        shapes.extend([(size, width), (size,)])
        width = size
    return shapes


def initial_weights(fed: FederationSpec) -> list[npt.NDArray[np.float32]]:
    """The federation's initial global model (same spec, same weights, on every machine)."""
    num_features, num_classes = task_dimensions(fed.task)
    shapes = weight_shapes(fed.model, num_features=num_features, num_classes=num_classes)
    rng = np.random.default_rng(np.random.SeedSequence([fed.seed, 0x4C455054]))
    weights: list[npt.NDArray[np.float32]] = []
    for index in range(0, len(shapes), 2):
        (out, fan_in), bias = shapes[index], shapes[index + 1]
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, size=(out, fan_in)).astype(np.float32))
        weights.append(rng.uniform(-bound, bound, size=bias).astype(np.float32))
    return weights
