"""Tabular building blocks: the split type, a fixed per-task encoding, seeded stratified splits.

The encoding of a task is *agreed*, never fitted: every numeric feature carries a fixed clinical
range, every categorical feature its fixed list of categories, and every nullable feature a fixed
fill value plus a 0/1 "missing" indicator column. A node therefore needs only its own rows and the
task's :class:`TabularSchema` to produce exactly the same columns as every other node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.examples import Examples, LocalSplit

__all__ = [
    "BinaryFeature",
    "CategoricalFeature",
    "DatasetError",
    "Feature",
    "NumericFeature",
    "TabularSchema",
    "TabularSplit",
    "make_split",
    "stratified_shares",
    "stratified_split",
]

Columns = Mapping[str, Sequence[Any] | npt.NDArray[Any]]
"""Column-oriented raw rows: column name -> values (one per row). ``None``/NaN mean missing."""


class DatasetError(ValueError):
    """A dataset, partition or data file cannot be used; the message says what to do.

    ``code`` is a stable machine-readable reason: ``unknown_task``, ``unknown_partition``,
    ``missing_dependency``, ``empty_partition``, ``bad_argument``, ``bad_data``,
    ``duplicate_task`` (two sources register one task name) or ``bad_task`` (a ``lepton_fl.tasks``
    entry point fails to load or gives something other than tasks).
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TabularSplit:
    """One site's local data, encoded and split into train and test sets."""

    name: str
    feature_names: tuple[str, ...]
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    num_classes: int

    @property
    def num_features(self) -> int:
        """Width of the encoded feature vector."""
        return len(self.feature_names)

    def local(self) -> LocalSplit:
        """The same data as a modality-independent :class:`LocalSplit` (inputs ``(x,)``)."""
        return LocalSplit(
            name=self.name,
            modality="tabular",
            train=Examples(inputs=(self.x_train,), labels=self.y_train),
            test=Examples(inputs=(self.x_test,), labels=self.y_test),
            num_classes=self.num_classes,
        )


@dataclass(frozen=True)
class NumericFeature:
    """A numeric column scaled from the fixed range ``[low, high]`` to ``[-1, 1]`` (clipped).

    If ``nullable``, a missing value (NaN/None, or 0 when ``zero_is_missing``) becomes ``fill``
    (raw units) and sets the ``<name>_missing`` indicator column.
    """

    name: str
    low: float
    high: float
    fill: float
    nullable: bool = False
    zero_is_missing: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"feature {self.name!r}: low must be < high")
        if not self.low <= self.fill <= self.high:
            raise ValueError(f"feature {self.name!r}: fill must lie within [low, high]")

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Names of the value columns this feature produces."""
        return (self.name,)


@dataclass(frozen=True)
class BinaryFeature:
    """A two-valued column encoded as one 0/1 column (1 for a value in ``positive``)."""

    name: str
    positive: tuple[Any, ...]
    negative: tuple[Any, ...]
    nullable: bool = False

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Names of the value columns this feature produces."""
        return (self.name,)


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column one-hot encoded over its fixed ``categories``.

    A missing value (if ``nullable``) is the all-zero vector plus the indicator column; a value
    outside ``categories`` is an error (the schema is agreed, not learnt from the data).
    """

    name: str
    categories: tuple[str, ...]
    nullable: bool = False

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Names of the value columns this feature produces."""
        return tuple(f"{self.name}={c}" for c in self.categories)


Feature = NumericFeature | BinaryFeature | CategoricalFeature


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float | np.floating) and math.isnan(value))
    except TypeError:  # pragma: no cover - exotic scalar types
        return False


@dataclass(frozen=True)
class TabularSchema:
    """The agreed encoding of one task: an ordered list of features."""

    task: str
    features: tuple[Feature, ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Encoded column names, in order: each feature's values, then its missing indicator."""
        names: list[str] = []
        for feature in self.features:
            names.extend(feature.value_columns)
            if feature.nullable:
                names.append(f"{feature.name}_missing")
        return tuple(names)

    @property
    def num_features(self) -> int:
        """Width of the encoded feature vector."""
        return len(self.feature_names)

    def encode(self, columns: Columns, *, source: str) -> npt.NDArray[np.float32]:
        """Encode raw columns into a float32 ``(n, num_features)`` matrix.

        ``source`` names where the rows came from; it is used in error messages.
        Raises :class:`DatasetError` (``bad_data``) for a missing column, a missing value in a
        non-nullable feature, a non-numeric number or an unknown category.
        """
        lengths = {len(columns[f.name]) for f in self.features if f.name in columns}
        absent = [f.name for f in self.features if f.name not in columns]
        if absent:
            raise DatasetError(
                f"{source}: column(s) {absent} required by the {self.task!r} schema are absent",
                code="bad_data",
            )
        if len(lengths) != 1:
            raise DatasetError(f"{source}: columns have different lengths", code="bad_data")
        n = lengths.pop()
        blocks: list[npt.NDArray[np.float32]] = []
        for feature in self.features:
            values, missing = self._encode_feature(feature, columns[feature.name], source=source)
            if missing.any() and not feature.nullable:
                raise DatasetError(
                    f"{source}: column {feature.name!r} has {int(missing.sum())} missing "
                    f"value(s) but the {self.task!r} schema does not allow missing values there",
                    code="bad_data",
                )
            blocks.append(values.reshape(n, -1))
            if feature.nullable:
                blocks.append(missing.astype(np.float32).reshape(n, 1))
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)

    def _encode_feature(
        self, feature: Feature, raw: Sequence[Any] | npt.NDArray[Any], *, source: str
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        if isinstance(feature, NumericFeature):
            return _encode_numeric(feature, raw, source=source)
        items = list(raw)
        missing = np.array([_is_missing(v) for v in items], dtype=np.bool_)
        if isinstance(feature, BinaryFeature):
            out = np.zeros(len(items), dtype=np.float32)
            for i, value in enumerate(items):
                if missing[i]:
                    continue
                if value in feature.positive:
                    out[i] = 1.0
                elif value not in feature.negative:
                    raise _unknown_value(
                        source, feature.name, value, (*feature.positive, *feature.negative)
                    )
            return out, missing
        onehot = np.zeros((len(items), len(feature.categories)), dtype=np.float32)
        index = {c: k for k, c in enumerate(feature.categories)}
        for i, value in enumerate(items):
            if missing[i]:
                continue
            k = index.get(value)
            if k is None:
                raise _unknown_value(source, feature.name, value, feature.categories)
            onehot[i, k] = 1.0
        return onehot, missing


def _unknown_value(source: str, column: str, value: Any, expected: Sequence[Any]) -> DatasetError:
    return DatasetError(
        f"{source}: unexpected value {value!r} in column {column!r}; the schema expects one of "
        f"{list(expected)} (or a missing value where allowed)",
        code="bad_data",
    )


def _encode_numeric(
    feature: NumericFeature, raw: Sequence[Any] | npt.NDArray[Any], *, source: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{source}: column {feature.name!r} must be numeric ({exc})", code="bad_data"
        ) from exc
    missing = ~np.isfinite(values)
    if feature.zero_is_missing:
        missing |= values == 0.0
    filled = np.where(missing, feature.fill, values)
    clipped = np.clip(filled, feature.low, feature.high)
    scaled = 2.0 * (clipped - feature.low) / (feature.high - feature.low) - 1.0
    return scaled.astype(np.float32), missing


def _check_fraction(test_fraction: float) -> None:
    if not (isinstance(test_fraction, float | int) and 0.0 < float(test_fraction) < 1.0):
        raise DatasetError(
            f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}",
            code="bad_argument",
        )


def stratified_split(
    y: npt.NDArray[np.int64], *, test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded split of row indices into (train, test), stratified on ``y``.

    Each class contributes ``round(count * test_fraction)`` rows to the test set, at least one
    when it has two or more rows and never all of them (train keeps every class it can).
    Both index arrays are sorted.
    """
    _check_fraction(test_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label).astype(np.int64)
        rng.shuffle(idx)
        m = len(idx)
        n_test = min(max(round(m * test_fraction), 1 if m >= 2 else 0), m - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_shares(
    y: npt.NDArray[np.int64], *, num_shares: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Seeded partition of row indices into ``num_shares`` disjoint shares, stratified on ``y``."""
    if num_shares < 1:
        raise DatasetError(f"num_shares must be >= 1, got {num_shares}", code="bad_argument")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A4E]))
    shares: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(num_shares)]
    offset = 0
    for label in np.unique(y):
        idx = np.flatnonzero(y == label).astype(np.int64)
        rng.shuffle(idx)
        # Rotate which share receives the larger chunks so that shares stay balanced overall.
        parts = np.array_split(idx, num_shares)
        for k, part in enumerate(parts):
            shares[(k + offset) % num_shares].append(part)
        offset += len(idx) % num_shares
    return [np.sort(np.concatenate(parts)) for parts in shares]


def make_split(
    *,
    name: str,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    feature_names: tuple[str, ...],
    num_classes: int,
    seed: int,
    test_fraction: float,
) -> TabularSplit:
    """Split encoded rows into a :class:`TabularSplit` (seeded, stratified on the label)."""
    if len(y) == 0:
        raise DatasetError(f"partition {name!r} has no rows", code="empty_partition")
    if len(y) < 2:
        raise DatasetError(
            f"partition {name!r} has {len(y)} row; at least 2 are needed for a train/test split",
            code="empty_partition",
        )
    if x.shape != (len(y), len(feature_names)):
        raise ValueError(f"x has shape {x.shape}, expected {(len(y), len(feature_names))}")
    train_idx, test_idx = stratified_split(y, test_fraction=test_fraction, seed=seed)
    if len(test_idx) == 0:
        # Only possible when every class has a single row; keep one row for testing.
        test_idx, train_idx = train_idx[:1], train_idx[1:]
    return TabularSplit(
        name=name,
        feature_names=feature_names,
        x_train=np.ascontiguousarray(x[train_idx], dtype=np.float32),
        y_train=np.ascontiguousarray(y[train_idx], dtype=np.int64),
        x_test=np.ascontiguousarray(x[test_idx], dtype=np.float32),
        y_test=np.ascontiguousarray(y[test_idx], dtype=np.int64),
        num_classes=num_classes,
    )
