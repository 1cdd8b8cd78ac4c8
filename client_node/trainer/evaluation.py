"""Evaluation of a classifier on local data: loss and `lepton_fl.metrics` (accuracy,
precision, recall, F1, ROC-AUC, confusion matrix)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from client_node.trainer.inputs import as_tensor, model_inputs
from lepton_fl.metrics import Confusion, classification_metrics
from lepton_fl.models.weights import unwrap_model

__all__ = ["EvalResult", "evaluate", "record_losses"]

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


def _logits(
    model: nn.Module, inputs: tuple[npt.NDArray[np.generic], ...], *, device: torch.device
) -> torch.Tensor:
    """The model's float64 CPU logits on every example, in chunks; train/eval mode restored."""
    module = unwrap_model(model)
    module.to(device)
    n = len(inputs[0])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return torch.cat(
                [
                    module(*(as_tensor(a[i : i + _CHUNK]).to(device) for a in inputs))
                    for i in range(0, n, _CHUNK)
                ]
            ).to("cpu", dtype=torch.float64)
    finally:
        module.train(was_training)


def evaluate(
    model: nn.Module,
    inputs: Sequence[npt.NDArray[np.generic]] | npt.NDArray[np.generic],
    y: npt.NDArray[np.integer],
    *,
    device: torch.device,
) -> EvalResult:
    """Evaluate ``model`` (plain or Opacus-wrapped; moved to ``device``) on ``inputs`` and
    their labels ``y``.

    ``inputs``: one array per positional argument of the model (``Examples.inputs``); a single
    array (tabular features ``(n, d)``) means one argument. The model's train/eval mode is
    restored afterwards. Raises ``ValueError`` for empty data, mismatched lengths, NaN in float
    inputs or labels outside the model's classes.
    """
    arrays, raw_labels = model_inputs(inputs, y)
    y_arr = np.asarray(raw_labels, dtype=np.int64)
    if len(y_arr) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    logits = _logits(model, arrays, device=device)
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


def record_losses(
    model: nn.Module,
    inputs: Sequence[npt.NDArray[np.generic]] | npt.NDArray[np.generic],
    y: npt.NDArray[np.integer],
    *,
    device: torch.device,
) -> npt.NDArray[np.float64]:
    """Each example's cross-entropy loss under ``model`` (the membership audit's score).
    These are exact figures on private rows: they stay on the node. Same checks as
    :func:`evaluate`; an empty set gives an empty array."""
    arrays, raw_labels = model_inputs(inputs, y)
    y_arr = np.asarray(raw_labels, dtype=np.int64)
    if len(y_arr) == 0:
        return np.zeros(0, dtype=np.float64)
    logits = _logits(model, arrays, device=device)
    if y_arr.min() < 0 or y_arr.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] for this model")
    losses = nn.functional.cross_entropy(logits, torch.from_numpy(y_arr), reduction="none")
    return np.asarray(losses.numpy(), dtype=np.float64)
