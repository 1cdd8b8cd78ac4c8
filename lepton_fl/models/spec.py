"""What a model is, in sizes, without torch: :class:`ModelSpec`, defaults, fixed architectures.

The node builds a model from these (``lepton_fl.models.registry``, torch) and the coordinator
plans the same model's exchanged tensors from them (``lepton_fl.models.plans``, numpy only), so
both read one source for every size: a ``ModelConfig``'s unset options become the defaults of
:func:`model_spec` on both sides, and the checks of a model's input shape are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from lepton_fl.config import ModelConfig

__all__ = [
    "DEFAULT_CHANNELS",
    "EMBEDDING_LAYERS",
    "MAX_POSITIONS",
    "MINILM_WIDTH",
    "MOBILENET_WIDTH",
    "TINY_BERT",
    "Activation",
    "ModelSpec",
    "check_feature_image_input",
    "check_image_input",
    "check_text_input",
    "model_spec",
]

Activation = Literal["relu", "tanh"]
"""The CNN's activation (``ModelConfig.activation``)."""

DEFAULT_CHANNELS = (16, 32)
"""The CNN's convolution blocks when ``ModelConfig.channels`` is unset."""

MAX_POSITIONS = 512
"""BERT's position embeddings: the longest ``max_length`` a text model takes."""

TINY_BERT = (32, 2, 2, 64)
"""``tiny_bert``: hidden size, transformer layers, attention heads, feed-forward size."""

EMBEDDING_LAYERS: tuple[int, ...] = (3, 4)
"""``minilm_embeddings``: encoder layers (1-6; 0 is the token embeddings) whose mean-pooled
states are the features."""

MINILM_WIDTH = 384
"""all-MiniLM-L6-v2's hidden size."""

MOBILENET_WIDTH = 1280
"""``mobilenet_features``: MobileNetV2's last block, the width of its features."""


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture to build, and its size.

    ``hidden``/``dropout``: the MLP (``tabular_mlp``; ``()`` is logistic regression) and the
    heads of ``cnn``, ``mobilenet_features`` and ``minilm_embeddings``.
    ``channels``/``activation``: the CNN's convolution blocks. ``trainable_layers``:
    ``minilm``/``tiny_bert``, top transformer layers trained with the head (``None``: all).
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


def check_image_input(input_shape: tuple[int, ...], channels: tuple[int, ...]) -> None:
    """``ValueError`` unless the cnn with ``channels`` blocks takes images of ``input_shape``."""
    if len(input_shape) != 3:
        raise ValueError(
            f"the cnn model needs images of shape (channels, height, width), got {input_shape}"
        )
    in_channels, height, width = input_shape
    if in_channels < 1:
        raise ValueError(f"images need at least one channel, got {in_channels}")
    if not channels:
        raise ValueError("the cnn model needs at least one convolution block (channels)")
    smallest = 2 ** len(channels)
    if min(height, width) < smallest:
        raise ValueError(
            f"images of {height}x{width} pixels are too small for {len(channels)} pooling "
            f"blocks; use images of at least {smallest}x{smallest} or fewer channels"
        )


def check_feature_image_input(input_shape: tuple[int, ...], model: str) -> None:
    """``ValueError`` unless a frozen image network takes ``input_shape``: grayscale or RGB
    ``(channels, height, width)`` of at least 32 pixels a side (the network's stride)."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3) or min(input_shape[1:]) < 32:
        raise ValueError(
            f"the {model} model takes grayscale or RGB images (channels, height, width) of at "
            f"least 32x32 pixels, got {input_shape}"
        )


def check_text_input(input_shape: tuple[int, ...], model: str) -> None:
    """``ValueError`` unless ``input_shape`` is ``(max_length,)`` with a length BERT takes."""
    if len(input_shape) != 1 or not 2 <= input_shape[0] <= MAX_POSITIONS:
        raise ValueError(
            f"the {model} model takes token sequences of shape (max_length,) with max_length in "
            f"[2, {MAX_POSITIONS}], got {input_shape}"
        )
