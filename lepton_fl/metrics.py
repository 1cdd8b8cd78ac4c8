"""Classification metrics of one node's held-out split, and their federation-wide aggregate.

Both sides use this module: a node's trainer computes `classification_metrics` on its own
held-out split (only these aggregate figures leave the node, never a row or a per-example
score), and the coordinator combines the nodes' figures with `aggregate_metrics`. It needs
numpy and scikit-learn only (no torch), so the ServerApp can import it.

Conventions, the same everywhere:

- The confusion matrix has one row per *true* class and one column per *predicted* class
  (scikit-learn's layout), always ``num_classes x num_classes``, also when a class is absent
  from the split. ``confusion[i][j]`` counts the examples of class ``i`` predicted as ``j``.
- A prediction is the class of highest probability (the first one on a tie).
- Two classes: precision, recall and F1 are those of the positive class ``1``.
- More classes: precision, recall and F1 are macro averages (the unweighted mean of the
  per-class values) over the classes that occur in the labels or in the predictions; a class
  that occurs in neither has no defined value and is left out.
- A ratio whose denominator is zero (no example predicted as a class, or none of the class)
  counts as ``0.0``, as scikit-learn's ``zero_division=0`` does.
- ROC-AUC: on P(class 1) for two classes; for more, the one-vs-rest AUC of each class present
  in the labels, averaged (macro). It is ``None`` when fewer than two classes are present in
  the labels, where it is undefined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "AggregateMetrics",
    "ClassificationMetrics",
    "Confusion",
    "aggregate_metrics",
    "classification_metrics",
    "rates_from_confusion",
    "validate_confusion",
]

Confusion = tuple[tuple[int, ...], ...]
"""A confusion matrix: rows are true classes, columns predicted classes."""


@dataclass(frozen=True)
class ClassificationMetrics:
    """A classifier's figures over ``num_examples`` examples (conventions: module docstring)."""

    num_examples: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    confusion: Confusion

    @property
    def num_classes(self) -> int:
        """The number of classes of the task (the confusion matrix's side)."""
        return len(self.confusion)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the confusion matrix as a list of lists)."""
        return {
            "num_examples": self.num_examples,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "roc_auc": self.roc_auc,
            "confusion": [list(row) for row in self.confusion],
        }


@dataclass(frozen=True)
class AggregateMetrics:
    """A federation's figures, combined from its nodes' own.

    ``accuracy``, ``precision``, ``recall``, ``f1``, ``roc_auc`` and ``loss`` are means of the
    nodes' values weighted by each node's number of examples (the issue's definition).
    ``roc_auc`` leaves out the nodes whose AUC is undefined (named in ``roc_auc_skipped``) and
    is ``None`` when every node's is; ``loss`` is ``None`` when no loss was given.
    ``confusion`` is the sum of the nodes' matrices (all examples pooled), and
    ``pooled_accuracy``, ``pooled_precision``, ``pooled_recall`` and ``pooled_f1`` are computed
    from it as if the examples had been evaluated in one place. The weighted accuracy and the
    pooled accuracy are the same number; the weighted and pooled precision, recall and F1
    differ in general (a mean of ratios is not the ratio of the sums).
    """

    nodes: tuple[str, ...]
    num_examples: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    roc_auc_skipped: tuple[str, ...]
    loss: float | None
    confusion: Confusion
    pooled_accuracy: float
    pooled_precision: float
    pooled_recall: float
    pooled_f1: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (tuples as lists)."""
        return {
            "nodes": list(self.nodes),
            "num_examples": self.num_examples,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "roc_auc": self.roc_auc,
            "roc_auc_skipped": list(self.roc_auc_skipped),
            "loss": self.loss,
            "confusion": [list(row) for row in self.confusion],
            "pooled_accuracy": self.pooled_accuracy,
            "pooled_precision": self.pooled_precision,
            "pooled_recall": self.pooled_recall,
            "pooled_f1": self.pooled_f1,
        }


def classification_metrics(
    labels: npt.ArrayLike, probs: npt.ArrayLike, num_classes: int
) -> ClassificationMetrics:
    """Accuracy, precision, recall, F1, ROC-AUC and the confusion matrix of ``probs``.

    ``labels`` holds ``n`` class indices in ``[0, num_classes)``; ``probs`` is ``(n,
    num_classes)``, each row a probability distribution over the classes (a softmax).
    Binary tasks report the positive class ``1``; tasks with more classes the macro average
    (see the module docstring). Raises ``ValueError`` for empty data, mismatched shapes, labels
    outside the classes or probabilities that are not finite.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape != (len(y), num_classes):
        raise ValueError(
            f"labels must be (n,) and probs (n, {num_classes}), got {y.shape} and {p.shape}"
        )
    if len(y) == 0:
        raise ValueError("cannot compute metrics of an empty data set")
    whole = (
        np.issubdtype(y.dtype, np.integer)
        or y.dtype == np.bool_
        or (
            np.issubdtype(y.dtype, np.floating)
            and bool(np.all(np.isfinite(y)))
            and np.array_equal(y, np.round(y))
        )
    )
    if not whole:
        raise ValueError(f"labels must be whole class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got values from {y.min()} to {y.max()}"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite (the model produced NaN or infinity)")
    predicted = p.argmax(axis=1)
    counts = np.bincount(y * num_classes + predicted, minlength=num_classes * num_classes)
    confusion: Confusion = tuple(
        tuple(int(v) for v in row) for row in counts.reshape(num_classes, num_classes)
    )
    accuracy, precision, recall, f1 = rates_from_confusion(confusion)
    return ClassificationMetrics(
        num_examples=len(y),
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        roc_auc=_roc_auc(y, p),
        confusion=confusion,
    )


def rates_from_confusion(confusion: Confusion) -> tuple[float, float, float, float]:
    """``(accuracy, precision, recall, f1)`` of a confusion matrix (module conventions:
    class ``1`` for two classes, macro average over the classes that occur otherwise)."""
    m = np.asarray(confusion, dtype=np.int64)
    total = int(m.sum())
    if total == 0:
        raise ValueError("the confusion matrix is empty (no examples)")
    tp = np.diag(m).astype(np.float64)
    predicted = m.sum(axis=0).astype(np.float64)  # per column
    actual = m.sum(axis=1).astype(np.float64)  # per row
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)  # = 2PR / (P + R) where defined
    accuracy = float(tp.sum() / total)
    if len(m) == 2:
        return accuracy, float(precision[1]), float(recall[1]), float(f1[1])
    occurring = (predicted + actual) > 0
    return (
        accuracy,
        float(precision[occurring].mean()),
        float(recall[occurring].mean()),
        float(f1[occurring].mean()),
    )


def validate_confusion(confusion: object, *, num_examples: int | None = None) -> Confusion:
    """Check that ``confusion`` is a square matrix (at least 2 x 2) of non-negative ``int``
    counts, summing to ``num_examples`` when it is given; return it as tuples. Raises
    ``ValueError`` naming what is wrong."""
    if not isinstance(confusion, Sequence) or isinstance(confusion, str | bytes):
        raise ValueError("the confusion matrix must be a list of rows")
    k = len(confusion)
    if k < 2:
        raise ValueError(f"the confusion matrix must be at least 2 x 2, got {k} rows")
    rows: list[tuple[int, ...]] = []
    for i, row in enumerate(confusion):
        if not isinstance(row, Sequence) or isinstance(row, str | bytes) or len(row) != k:
            raise ValueError(f"row {i} of the confusion matrix must hold {k} counts (square)")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(
                    f"confusion[{i}][{j}] must be a non-negative whole count, got {value!r}"
                )
        rows.append(tuple(int(v) for v in row))
    total = sum(sum(r) for r in rows)
    if num_examples is not None and total != num_examples:
        raise ValueError(
            f"the confusion matrix counts {total} examples but num_examples is {num_examples}"
        )
    return tuple(rows)


def aggregate_metrics(
    per_node: Mapping[str, ClassificationMetrics],
    *,
    losses: Mapping[str, float] | None = None,
) -> AggregateMetrics:
    """Combine the nodes' figures into the federation's (see `AggregateMetrics`).

    ``losses`` optionally gives each node's mean loss (same keys as ``per_node``). Raises
    ``ValueError`` when there is no node, a node has no examples, the nodes disagree on the
    number of classes, or a loss is missing. A node's infinite or NaN loss (a diverged model)
    makes the federation's loss infinite or NaN too: it is reported, not hidden.
    """
    if not per_node:
        raise ValueError("no node's metrics to aggregate")
    names = tuple(per_node)
    sizes = {name: m.num_examples for name, m in per_node.items()}
    empty = [name for name, n in sizes.items() if n <= 0]
    if empty:
        raise ValueError(f"node(s) {', '.join(empty)} report no examples; leave them out")
    classes = {name: m.num_classes for name, m in per_node.items()}
    if len(set(classes.values())) != 1:
        detail = ", ".join(f"{name}: {k}" for name, k in classes.items())
        raise ValueError(f"the nodes disagree on the number of classes ({detail})")
    total = sum(sizes.values())

    def weighted(values: Mapping[str, float]) -> float:
        weight = sum(sizes[name] for name in values)
        return float(sum(sizes[name] * v for name, v in values.items()) / weight)

    aucs = {name: m.roc_auc for name, m in per_node.items() if m.roc_auc is not None}
    loss: float | None = None
    if losses is not None:
        missing = [name for name in names if name not in losses]
        if missing:
            raise ValueError(f"no loss given for node(s) {', '.join(missing)}")
        loss = weighted({name: losses[name] for name in names})
    pooled = np.sum([np.asarray(m.confusion, dtype=np.int64) for m in per_node.values()], axis=0)
    confusion: Confusion = tuple(tuple(int(v) for v in row) for row in pooled)
    pooled_accuracy, pooled_precision, pooled_recall, pooled_f1 = rates_from_confusion(confusion)
    return AggregateMetrics(
        nodes=names,
        num_examples=total,
        accuracy=weighted({name: m.accuracy for name, m in per_node.items()}),
        precision=weighted({name: m.precision for name, m in per_node.items()}),
        recall=weighted({name: m.recall for name, m in per_node.items()}),
        f1=weighted({name: m.f1 for name, m in per_node.items()}),
        roc_auc=weighted(aucs) if aucs else None,
        roc_auc_skipped=tuple(name for name in names if name not in aucs),
        loss=loss,
        confusion=confusion,
        pooled_accuracy=pooled_accuracy,
        pooled_precision=pooled_precision,
        pooled_recall=pooled_recall,
        pooled_f1=pooled_f1,
    )


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _roc_auc(y: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]) -> float | None:
    present = np.unique(y)
    if len(present) < 2:
        return None
    # imported here: the ServerApp imports this module, and sklearn costs seconds to import
    from sklearn.metrics import roc_auc_score

    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
