"""Evaluation of a classifier on local data: loss, accuracy and ROC AUC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from lepton_fl.models.weights import unwrap_model

__all__ = ["EvalResult", "evaluate"]

_CHUNK = 8192


@dataclass(frozen=True)
class EvalResult:
    """Metrics over ``num_examples`` examples.

    ``loss`` is the mean cross-entropy. ``roc_auc`` is on P(class 1) for two classes and the
    one-vs-rest macro average over the classes present otherwise; it is ``None`` when ``y``
    holds a single class (AUC is undefined then).
    """

    num_examples: int
    loss: float
    accuracy: float
    roc_auc: float | None


def _roc_auc(y: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]) -> float | None:
    present = np.unique(y)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def evaluate(
    model: nn.Module,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    *,
    device: torch.device,
) -> EvalResult:
    """Evaluate ``model`` (plain or Opacus-wrapped, already on ``device``) on ``(x, y)``.

    The model's train/eval mode is restored afterwards. Raises ``ValueError`` for empty data,
    mismatched lengths or labels outside the model's classes.
    """
    x_arr, y_arr = np.asarray(x), np.asarray(y, dtype=np.int64)
    if x_arr.ndim != 2 or y_arr.ndim != 1 or len(x_arr) != len(y_arr):
        raise ValueError(f"x must be (n, d) and y (n,), got {x_arr.shape} and {y_arr.shape}")
    if len(y_arr) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    module = unwrap_model(model)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            logits = torch.cat(
                [
                    module(torch.as_tensor(x_arr[i : i + _CHUNK], dtype=torch.float32).to(device))
                    for i in range(0, len(x_arr), _CHUNK)
                ]
            ).to("cpu", dtype=torch.float64)
    finally:
        module.train(was_training)
    num_classes = logits.shape[1]
    if y_arr.min() < 0 or y_arr.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] for this model")
    labels = torch.from_numpy(y_arr)
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(dim=1) == labels).double().mean())
    probs = torch.softmax(logits, dim=1).numpy()
    return EvalResult(
        num_examples=len(y_arr), loss=loss, accuracy=accuracy, roc_auc=_roc_auc(y_arr, probs)
    )
