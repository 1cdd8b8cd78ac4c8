"""Model registry: a frozen :class:`ModelSpec` names an architecture; :func:`build_model` builds it.

Builds are deterministic for a seed (the global RNG is forked, not consumed) and every registered
architecture must pass ``opacus.validators.ModuleValidator.validate(model, strict=True)``.
A model is called as ``model(*inputs)`` on the inputs of ``lepton_fl.datasets.Examples``:

- ``tabular_mlp``: ``(features,)``, input shape ``(num_features,)``;
- ``cnn``, ``mobilenet_features``: ``(pixels,)``, input shape ``(channels, height, width)``;
- ``minilm``, ``minilm_embeddings``, ``tiny_bert``: ``(input_ids, attention_mask,
  token_type_ids, position_ids)``, input shape ``(max_length,)``.

What each model takes, which tokenizer it reads and which options it has are facts of
:mod:`lepton_fl.models.catalog` (one entry per model, no torch); :class:`ModelSpec` and its sizes
live in :mod:`lepton_fl.models.spec` (no torch, re-exported here); this module only builds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lepton_fl.models.catalog import MODELS
from lepton_fl.models.cnn import ImageCNN
from lepton_fl.models.spec import ModelSpec, model_spec
from lepton_fl.models.tabular_mlp import TabularMLP

__all__ = [
    "ModelBuilder",
    "ModelSpec",
    "build_model",
    "list_models",
    "model_spec",
    "register_model",
]

ModelBuilder = Callable[[ModelSpec, tuple[int, ...], int], nn.Module]
"""``(spec, input_shape, num_classes) -> module``; called under a seeded RNG."""


def _build_tabular_mlp(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(
            f"the tabular_mlp model takes feature vectors of shape (num_features,), "
            f"got {input_shape}"
        )
    return TabularMLP(
        num_features=input_shape[0],
        num_classes=num_classes,
        hidden=spec.hidden,
        dropout=spec.dropout,
    )


def _build_cnn(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ImageCNN(
        input_shape=input_shape,
        num_classes=num_classes,
        channels=spec.channels,
        hidden=spec.hidden,
        dropout=spec.dropout,
        activation=spec.activation,
    )


def _build_minilm_embeddings(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    from lepton_fl.models.sentence import build_minilm_embeddings

    return build_minilm_embeddings(
        input_shape=input_shape, num_classes=num_classes, hidden=spec.hidden, dropout=spec.dropout
    )


def _build_mobilenet_features(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    from lepton_fl.models.mobilenet import build_mobilenet_features

    return build_mobilenet_features(
        input_shape=input_shape, num_classes=num_classes, hidden=spec.hidden, dropout=spec.dropout
    )


def _build_minilm(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from lepton_fl.models.text import build_minilm

    return build_minilm(
        input_shape=input_shape, num_classes=num_classes, trainable_layers=spec.trainable_layers
    )


def _build_tiny_bert(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from lepton_fl.models.text import build_tiny_bert

    return build_tiny_bert(
        input_shape=input_shape, num_classes=num_classes, trainable_layers=spec.trainable_layers
    )


_REGISTRY: dict[str, ModelBuilder] = {
    "tabular_mlp": _build_tabular_mlp,
    "cnn": _build_cnn,
    "mobilenet_features": _build_mobilenet_features,
    "minilm": _build_minilm,
    "minilm_embeddings": _build_minilm_embeddings,
    "tiny_bert": _build_tiny_bert,
}


if set(_REGISTRY) != set(MODELS):  # pragma: no cover - a guard for editors
    raise RuntimeError("lepton_fl.models: every catalog entry needs a builder, and vice versa")


def register_model(name: str, builder: ModelBuilder) -> None:
    """Add an architecture (tests, extensions); ``ValueError`` if ``name`` is taken.

    A federation can name only the models of :mod:`lepton_fl.models.catalog`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder


def list_models() -> tuple[str, ...]:
    """Registered architecture names."""
    return tuple(sorted(_REGISTRY))


def build_model(
    spec: ModelSpec,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int,
    seed: int,
    num_features: int | None = None,
) -> nn.Module:
    """Build ``spec`` for inputs of ``input_shape`` (one example's first input), with weights
    drawn from ``seed`` (same seed, same weights), on the CPU.

    ``num_features=d`` is the older spelling of ``input_shape=(d,)`` (tabular models).
    The global torch RNG is forked for the build, so callers' random state is untouched.
    """
    builder = _REGISTRY.get(spec.name)
    if builder is None:
        raise ValueError(f"unknown model {spec.name!r}; choose one of {list(list_models())}")
    if (input_shape is None) == (num_features is None):
        raise ValueError("give exactly one of input_shape and num_features")
    shape = (int(num_features),) if num_features is not None else tuple(input_shape or ())
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be positive ints, got {shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(spec, shape, num_classes)
