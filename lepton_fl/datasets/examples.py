"""Model-ready local data of any modality: the one form the trainer, evaluation and bench use.

A node's data, whatever its source (a CSV file, an image folder, a JSONL file, a package's demo
data), ends up as a :class:`LocalSplit`: a train and a test :class:`Examples`, each a tuple of
arrays whose first axis is the example, and integer labels. The model is called as
``model(*inputs)`` on a batch of rows of every array, so

- tabular data is ``(features,)`` with ``features`` float32 ``(n, num_features)``;
- images are ``(pixels,)`` with ``pixels`` float32 ``(n, channels, height, width)``;
- text is ``(input_ids, attention_mask, token_type_ids, position_ids)``, int64 ``(n, length)``
  each (Opacus needs ``token_type_ids`` and ``position_ids`` per sample for BERT models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Examples", "ImageSpec", "LocalSplit", "Modality", "TextSpec"]

Modality = Literal["tabular", "image", "text"]


@dataclass(frozen=True)
class Examples:
    """``n`` examples: model inputs (one array per positional argument) and labels."""

    inputs: tuple[npt.NDArray[np.generic], ...]
    labels: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if not self.inputs:
            raise ValueError("examples need at least one input array")
        for i, array in enumerate(self.inputs):
            if array.ndim < 1 or len(array) != len(labels):
                raise ValueError(
                    f"input {i} has shape {array.shape}; its first axis must be the "
                    f"{len(labels)} examples"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example's first input (``(num_features,)``, ``(c, h, w)``, ``(len,)``)."""
        return tuple(int(d) for d in self.inputs[0].shape[1:])


@dataclass(frozen=True)
class LocalSplit:
    """One site's data for one task, split into train and test examples."""

    name: str
    modality: Modality
    train: Examples
    test: Examples
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example's first input."""
        return self.train.input_shape


@dataclass(frozen=True)
class ImageSpec:
    """How a task's images are prepared, agreed by every site: decoded, converted to
    ``channels`` (1 grayscale, 3 RGB), resized to ``size`` x ``size``, scaled to [0, 1], then
    normalised as ``(x - mean) / std`` (one mean and std for every channel)."""

    channels: Literal[1, 3]
    size: int
    mean: float = 0.5
    std: float = 0.5


@dataclass(frozen=True)
class TextSpec:
    """How a task's texts are tokenised, agreed by every site: the registered tokenizer
    ``tokenizer`` (see ``lepton_fl.models``), padded or truncated to ``max_length`` tokens."""

    tokenizer: str
    max_length: int = 128
