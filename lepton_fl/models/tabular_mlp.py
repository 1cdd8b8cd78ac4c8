"""A small multilayer perceptron for tabular data, compatible with Opacus.

Only ``Linear``, ``ReLU`` and ``Dropout`` layers: no BatchNorm (Opacus refuses it, since it mixes
examples within a batch), so per-sample gradients are exact and cheap (Opacus hooks mode).
"""

from __future__ import annotations

from torch import nn

__all__ = ["TabularMLP"]


class TabularMLP(nn.Sequential):
    """``Linear -> ReLU [-> Dropout]`` per hidden width, then a ``Linear`` to the class logits.

    With ``hidden=()`` it is multinomial logistic regression.
    """

    def __init__(
        self, *, num_features: int, num_classes: int, hidden: tuple[int, ...], dropout: float
    ) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            layers.append(nn.ReLU())
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
