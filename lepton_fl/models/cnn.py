"""A small convolutional network for grayscale or colour images, compatible with Opacus.

Blocks of ``Conv2d(3x3) -> GroupNorm -> ReLU -> MaxPool2d(2)``, a global average pool, then the
same head as :class:`~lepton_fl.models.tabular_mlp.TabularMLP`. GroupNorm, not BatchNorm:
BatchNorm mixes the examples of a batch, so Opacus refuses it (per-sample gradients would not
exist). The global pool makes the weights independent of the image size.
"""

from __future__ import annotations

import torch
from torch import nn

from lepton_fl.models.tabular_mlp import TabularMLP

__all__ = ["ImageCNN"]


def _groups(width: int) -> int:
    """The largest group count <= 8 that divides ``width`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(8, width) + 1) if width % g == 0)


class ImageCNN(nn.Module):
    """``channels`` convolution blocks over ``(c, h, w)`` images, then an MLP head."""

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, ...],
        hidden: tuple[int, ...],
        dropout: float,
    ) -> None:
        super().__init__()
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
        layers: list[nn.Module] = []
        previous = in_channels
        for size in channels:
            layers += [
                nn.Conv2d(previous, size, kernel_size=3, padding=1),
                nn.GroupNorm(_groups(size), size),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = size
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = TabularMLP(
            num_features=previous, num_classes=num_classes, hidden=hidden, dropout=dropout
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n, num_classes)`` for images ``(n, c, h, w)``."""
        return self.head(torch.flatten(self.pool(self.features(pixels)), 1))  # type: ignore[no-any-return]
