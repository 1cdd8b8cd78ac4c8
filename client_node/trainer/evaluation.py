"""Evaluation of a classifier on local data: loss and `lepton_fl.metrics` (accuracy,
precision, recall, F1, ROC-AUC, confusion matrix)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lepton_fl.metrics import Confusion, classification_metrics
from lepton_fl.models.weights import unwrap_model

__all__ = ["EvalResult", "evaluate"]

_CHUNK = 8192


@dataclass(frozen=True)
class EvalResult:
    """Metrics over ``num_examples`` examples.

    ``loss`` is the mean cross-entropy; the other figures follow `lepton_fl.metrics`: for two
    classes precision, recall and F1 are those of class 1 and ``roc_auc`` is on P(class 1);
    for more classes they are macro averages and ``roc_auc`` is one-vs-rest over the classes
    present. ``roc_auc`` is ``None`` when ``y`` holds a single class (AUC is undefined then).
    ``confusion[i][j]`` counts the examples of true class ``i`` predicted as ``j``.
    """

    num_examples: int
    loss: float
    accuracy: float
    roc_auc: float | None
    precision: float
    recall: float
    f1: float
    confusion: Confusion


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
    loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y_arr)))
    probs = torch.softmax(logits, dim=1).numpy()
    m = classification_metrics(y_arr, probs, num_classes)
    return EvalResult(
        num_examples=m.num_examples,
        loss=loss,
        accuracy=m.accuracy,
        roc_auc=m.roc_auc,
        precision=m.precision,
        recall=m.recall,
        f1=m.f1,
        confusion=m.confusion,
    )
