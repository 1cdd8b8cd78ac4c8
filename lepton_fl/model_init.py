"""The initial global model of a federation, from its spec alone, without torch.

The coordinator owns the global model from round 1: it builds the initial weights here and
sends them with the first train instruction, as Flower strategies do with initial parameters.
Secure aggregation needs this: nodes send masked *updates* relative to the model they received,
and the coordinator adds the decoded mean update to the model it holds.

Every catalog model is planned and drawn by :mod:`lepton_fl.models.plans` with numpy (and, for
``minilm``, ``safetensors.numpy``): the node's trainable parameters in ``named_parameters``
order, with the initialisation scheme of the node's torch build (uniform in ``±1/sqrt(fan_in)``
for torch's Linear and Conv2d layers, BERT's ``N(0, 0.02)``, norms at one and zero, the
package's pretrained tensors), random values drawn one after another from a numpy generator
seeded with the federation's public seed. Same spec, same weights, on every machine; the
ServerApp never imports torch, transformers or tokenizers (``tiny_bert`` alone needs
tokenizers: its vocabulary is the tiny tokenizer's). The values are not a node's own torch
build's: nodes load the weights they receive.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lepton_fl.config import FederationSpec, ModelConfig
from lepton_fl.datasets import TaskInfo, get_task
from lepton_fl.models.catalog import MODELS
from lepton_fl.models.plans import ModelPlan, draw_weights, model_plan
from lepton_fl.models.spec import model_spec

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
    model must take the task's kind of data, a text model must read the token ids of the
    tokenizer the task's sites use, and this installation must be able to plan the model's
    tensors (``minilm`` needs the MiniLM package, ``tiny_bert`` the tokenizers library: the
    `text` extra, which the coordinator image leaves out).
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
    try:
        _plan(model, input_shape(info), info.num_classes)
    except ValueError as err:
        return "model.name", f"model {model.name!r} cannot be planned here: {err}"
    return None


def task_input_shape(task: str) -> tuple[int, ...]:
    """:func:`input_shape` of a registered task."""
    return input_shape(get_task(task))


def _plan(model: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    return model_plan(model_spec(model), input_shape=input_shape, num_classes=num_classes)


def weight_shapes(
    model: ModelConfig,
    *,
    num_features: int | None = None,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
) -> Shapes:
    """Shapes of the exchanged tensors (the trainable parameters, in order), for inputs of
    ``input_shape`` (``num_features=d``: ``input_shape=(d,)``), without torch."""
    if input_shape is None:
        if num_features is None:
            raise ValueError("give num_features or input_shape")
        input_shape = (num_features,)
    return _plan(model, input_shape, num_classes).shapes


def initial_weights(fed: FederationSpec) -> list[npt.NDArray[np.float32]]:
    """The federation's initial global model (same spec, same weights, on every machine)."""
    info = get_task(fed.task)
    plan = _plan(fed.model, input_shape(info), info.num_classes)
    rng = np.random.default_rng(np.random.SeedSequence([fed.seed, 0x4C455054]))
    return draw_weights(plan, rng)
