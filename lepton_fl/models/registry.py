"""Model registry: a frozen :class:`ModelSpec` names an architecture; :func:`build_model` builds it.

Builds are deterministic for a seed (the global RNG is forked, not consumed) and every registered
architecture must pass ``opacus.validators.ModuleValidator.validate(model, strict=True)``.
A model is called as ``model(*inputs)`` on the inputs of ``lepton_fl.datasets.Examples``:

- ``tabular_mlp``: ``(features,)``, input shape ``(num_features,)``;
- ``cnn``: ``(pixels,)``, input shape ``(channels, height, width)``;
- ``minilm``, ``minilm_embeddings``, ``tiny_bert``: ``(input_ids, attention_mask,
  token_type_ids, position_ids)``, input shape ``(max_length,)``.

What each model takes, which tokenizer it reads and which options it has are facts of
:mod:`lepton_fl.models.catalog` (one entry per model, no torch); this module only builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lepton_fl.models.catalog import MODELS
from lepton_fl.models.cnn import Activation, ImageCNN
from lepton_fl.models.tabular_mlp import TabularMLP

if TYPE_CHECKING:
    from lepton_fl.config import ModelConfig

__all__ = [
    "ModelBuilder",
    "ModelSpec",
    "build_model",
    "list_models",
    "model_spec",
    "register_model",
]

DEFAULT_CHANNELS = (16, 32)


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture to build, and its size.

    ``hidden``/``dropout``: the MLP (``tabular_mlp``; ``()`` is logistic regression) and the
    heads of ``cnn`` and ``minilm_embeddings``. ``channels``/``activation``: the CNN's
    convolution blocks. ``trainable_layers``: ``minilm``/``tiny_bert``, top transformer layers
    trained with the head (``None``: all).
    """

    name: str = "tabular_mlp"
    hidden: tuple[int, ...] = (32,)
    dropout: float = 0.0
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    activation: Activation = "relu"
    trainable_layers: int | None = None

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)  # accept lists from JSON, store a tuple
        object.__setattr__(self, "hidden", hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive ints, got {hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        channels = tuple(self.channels)
        object.__setattr__(self, "channels", channels)
        if not channels or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels
        ):
            raise ValueError(f"channels must be one or more positive ints, got {channels!r}")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        layers = self.trainable_layers
        if layers is not None and (not isinstance(layers, int) or layers < 0):
            raise ValueError(f"trainable_layers must be None or an int >= 0, got {layers!r}")


def model_spec(config: ModelConfig) -> ModelSpec:
    """The :class:`ModelSpec` of a federation's ``ModelConfig`` (unset options: defaults)."""
    return ModelSpec(
        name=config.name,
        hidden=tuple(config.hidden),
        dropout=config.dropout,
        channels=tuple(config.channels) if config.channels is not None else DEFAULT_CHANNELS,
        activation=config.activation or "relu",
        trainable_layers=config.trainable_layers,
    )


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
