"""The initial global model of a federation, from its spec alone.

The coordinator owns the global model from round 1: it builds the initial weights here
(numpy only, so the ServerApp never imports torch) and sends them with the first train
instruction, as Flower strategies do with initial parameters. Secure aggregation needs
this: nodes send masked *updates* relative to the model they received, and the coordinator
adds the decoded mean update to the model it holds.

Initialisation follows ``torch.nn.Linear``'s default (weights and biases uniform in
``±1/sqrt(fan_in)``), drawn from a numpy generator seeded with the federation's public seed,
so every party derives the same model from the same spec.

Every other model (CNN, transformers) is built with torch exactly as a node builds it
(``lepton_fl.models.build_model`` with the federation's seed; torch is imported only then) and
its trainable parameters are the initial weights: bit-identical to a node's own build.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from lepton_fl.config import FederationSpec, ModelConfig
from lepton_fl.datasets import TaskInfo, get_task
from lepton_fl.models.catalog import MODELS

Shapes = list[tuple[int, ...]]


def task_dimensions(task: str) -> tuple[int, int]:
    """``(num_features, num_classes)`` of a registered tabular task, from its agreed schema."""
    info = get_task(task)
    if info.schema is None:
        raise ValueError(f"Task {task!r} is not tabular: it has no feature schema.")
    return info.schema.num_features, info.num_classes


def input_shape(info: TaskInfo) -> tuple[int, ...]:
    """One example's model input shape, as every site prepares it: ``(num_features,)``
    (tabular), ``(channels, size, size)`` (image) or ``(max_length,)`` (text)."""
    if info.modality == "image":
        if info.image is None:
            raise ValueError(f"Image task {info.name!r} does not say how images are prepared.")
        return (int(info.image.channels), info.image.size, info.image.size)
    if info.modality == "text":
        if info.text is None:
            raise ValueError(f"Text task {info.name!r} does not say how texts are tokenised.")
        return (info.text.max_length,)
    if info.schema is None:
        raise ValueError(f"Task {info.name!r} is not tabular: it has no feature schema.")
    return (info.schema.num_features,)


MODEL_MODALITY = {name: info.modality for name, info in MODELS.items()}
"""The kind of data each registered model takes (from ``lepton_fl.models.catalog``)."""

MODEL_TOKENIZER = {name: info.tokenizer for name, info in MODELS.items() if info.tokenizer}
"""The tokenizer whose token ids a text model's embeddings were built for."""


def model_task_problem(model: ModelConfig, task: str) -> tuple[str, str] | None:
    """Why ``model`` cannot train ``task``, as ``(field, message)``; None when it can.

    The task must be registered (every site and the coordinator must know its encoding), the
    model must take the task's kind of data, and a text model must read the token ids of the
    tokenizer the task's sites use.
    """
    try:
        info = get_task(task)
    except ValueError as err:
        return "task", str(err)
    modality = MODEL_MODALITY.get(model.name)
    if modality != info.modality:
        fitting = sorted(name for name, kind in MODEL_MODALITY.items() if kind == info.modality)
        return "model.name", (
            f"model {model.name!r} takes {modality} data but task {task!r} is "
            f"{info.modality}; use {' or '.join(repr(f) for f in fitting)}"
        )
    wanted = MODEL_TOKENIZER.get(model.name)
    if wanted is not None and info.text is not None and info.text.tokenizer != wanted:
        return "model.name", (
            f"model {model.name!r} reads {wanted!r} token ids but task {task!r} is tokenised "
            f"with {info.text.tokenizer!r}; choose the task variant for this model"
        )
    return None


def task_input_shape(task: str) -> tuple[int, ...]:
    """:func:`input_shape` of a registered task."""
    return input_shape(get_task(task))


def _torch_weights(
    model: ModelConfig, *, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> list[npt.NDArray[np.float32]]:
    from lepton_fl.models import build_model, get_weights, model_spec

    built = build_model(
        model_spec(model), input_shape=input_shape, num_classes=num_classes, seed=seed
    )
    return get_weights(built)


def weight_shapes(
    model: ModelConfig,
    *,
    num_features: int | None = None,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
) -> Shapes:
    """Shapes of the exchanged tensors (the trainable parameters, in order).

    ``tabular_mlp`` (``num_features`` or ``input_shape=(num_features,)``): each Linear's weight
    ``(out, in)``, then its bias, without torch. Other models: from a torch build.
    """
    if input_shape is None:
        if num_features is None:
            raise ValueError("give num_features or input_shape")
        input_shape = (num_features,)
    if model.name != "tabular_mlp":
        weights = _torch_weights(model, input_shape=input_shape, num_classes=num_classes, seed=0)
        return [tuple(w.shape) for w in weights]
    if len(input_shape) != 1:
        raise ValueError(f"tabular_mlp takes (num_features,) inputs, got {input_shape}")
    num_features = input_shape[0]
    shapes: Shapes = []
    width = num_features
    for size in (*model.hidden, num_classes):
        shapes.extend([(size, width), (size,)])
        width = size
    return shapes


def initial_weights(fed: FederationSpec) -> list[npt.NDArray[np.float32]]:
    """The federation's initial global model (same spec, same weights, on every machine)."""
    info = get_task(fed.task)
    if fed.model.name != "tabular_mlp":
        return _torch_weights(
            fed.model, input_shape=input_shape(info), num_classes=info.num_classes, seed=fed.seed
        )
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
