"""Breast cancer Wisconsin (diagnostic), 569 x 30, bundled with scikit-learn: the test task.

Partitions ``site-<i>-of-<n>`` are disjoint, stratified 1/n shares drawn with a fixed seed
(:data:`PARTITION_SEED`), so every node that loads ``site-i-of-n`` gets the same rows whatever
``seed`` it uses for its own train/test split. Labels are scikit-learn's (0 malignant, 1 benign).
Encoding: each of the 30 features is scaled to [-1, 1] from a fixed range (the published minimum
and maximum of the data set, rounded outward); there are no missing values.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lepton_fl.datasets.tabular import (
    DatasetError,
    NumericFeature,
    TabularSchema,
    TabularSplit,
    make_split,
    stratified_shares,
)

__all__ = [
    "BREAST_CANCER_PARTITIONS",
    "BREAST_CANCER_SCHEMA",
    "PARTITION_SEED",
    "load_breast_cancer_partition",
]

TASK = "breast_cancer"
PARTITION_SEED = 20240611
"""Fixed seed of the share assignment (not the split seed), so that shares are disjoint."""
BREAST_CANCER_PARTITIONS: tuple[str, ...] = ("site-0-of-3", "site-1-of-3", "site-2-of-3")
MAX_SHARES = 20
_PARTITION_RE = re.compile(r"^site-(\d+)-of-(\d+)$")

_RANGES: tuple[tuple[str, float, float], ...] = (
    ("mean radius", 6.9, 29.0),
    ("mean texture", 9.7, 40.0),
    ("mean perimeter", 43.0, 190.0),
    ("mean area", 140.0, 2600.0),
    ("mean smoothness", 0.052, 0.17),
    ("mean compactness", 0.019, 0.35),
    ("mean concavity", 0.0, 0.43),
    ("mean concave points", 0.0, 0.21),
    ("mean symmetry", 0.1, 0.31),
    ("mean fractal dimension", 0.049, 0.098),
    ("radius error", 0.11, 2.9),
    ("texture error", 0.36, 4.9),
    ("perimeter error", 0.75, 22.0),
    ("area error", 6.8, 550.0),
    ("smoothness error", 0.0017, 0.032),
    ("compactness error", 0.0022, 0.14),
    ("concavity error", 0.0, 0.4),
    ("concave points error", 0.0, 0.053),
    ("symmetry error", 0.0078, 0.079),
    ("fractal dimension error", 0.00089, 0.03),
    ("worst radius", 7.9, 37.0),
    ("worst texture", 12.0, 50.0),
    ("worst perimeter", 50.0, 260.0),
    ("worst area", 180.0, 4300.0),
    ("worst smoothness", 0.071, 0.23),
    ("worst compactness", 0.027, 1.1),
    ("worst concavity", 0.0, 1.3),
    ("worst concave points", 0.0, 0.3),
    ("worst symmetry", 0.15, 0.67),
    ("worst fractal dimension", 0.055, 0.21),
)

BREAST_CANCER_SCHEMA = TabularSchema(
    task=TASK,
    features=tuple(
        NumericFeature(name, low=low, high=high, fill=low) for name, low, high in _RANGES
    ),
)
"""The agreed encoding: 30 numeric features -> 30 columns in [-1, 1]."""


def parse_partition(partition: str) -> tuple[int, int]:
    """``"site-<i>-of-<n>"`` -> ``(i, n)``; :class:`DatasetError` when malformed or out of range."""
    match = _PARTITION_RE.match(partition)
    if match is not None:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= count <= MAX_SHARES and 0 <= index < count:
            return index, count
    raise DatasetError(
        f"unknown breast_cancer partition {partition!r}; use 'site-<i>-of-<n>' with "
        f"1 <= n <= {MAX_SHARES} and 0 <= i < n, e.g. {list(BREAST_CANCER_PARTITIONS)}",
        code="unknown_partition",
    )


def _read_all() -> tuple[dict[str, Any], np.ndarray[Any, np.dtype[np.int64]]]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as exc:
        raise DatasetError(
            "the breast_cancer data ships with scikit-learn, which is not installed: "
            "pip install 'lepton-fl[node]'  (scikit-learn comes with the node extra)",
            code="missing_dependency",
        ) from exc
    bunch = load_breast_cancer()
    data = np.asarray(bunch.data, dtype=np.float64)
    names = [str(n) for n in bunch.feature_names]
    columns = {name: data[:, k] for k, name in enumerate(names)}
    return columns, np.asarray(bunch.target, dtype=np.int64)


def load_breast_cancer_partition(
    partition: str, *, seed: int, test_fraction: float
) -> TabularSplit:
    """Load one stratified share of breast cancer, encoded and split train/test."""
    index, count = parse_partition(partition)
    columns, y = _read_all()
    rows = stratified_shares(y, num_shares=count, seed=PARTITION_SEED)[index]
    if len(rows) == 0:
        raise DatasetError(
            f"breast_cancer partition {partition!r} is empty", code="empty_partition"
        )
    share = {name: values[rows] for name, values in columns.items()}
    source = f"scikit-learn breast_cancer, partition {partition!r}"
    x = BREAST_CANCER_SCHEMA.encode(share, source=source)
    return make_split(
        name=partition,
        x=x,
        y=y[rows],
        feature_names=BREAST_CANCER_SCHEMA.feature_names,
        num_classes=2,
        seed=seed,
        test_fraction=test_fraction,
    )
