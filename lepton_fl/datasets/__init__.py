"""Demo data: agreed per-task tabular encodings, real partitions, seeded stratified splits."""

from lepton_fl.datasets.examples import Examples, ImageSpec, LocalSplit, Modality, TextSpec
from lepton_fl.datasets.heart_disease import HEART_DISEASE_SCHEMA, HEART_DISEASE_SITES
from lepton_fl.datasets.registry import (
    TASKS,
    TaskInfo,
    get_task,
    list_partitions,
    list_tasks,
    load_local,
    load_partition,
)
from lepton_fl.datasets.tabular import DatasetError, TabularSchema, TabularSplit

__all__ = [
    "HEART_DISEASE_SCHEMA",
    "HEART_DISEASE_SITES",
    "TASKS",
    "DatasetError",
    "Examples",
    "ImageSpec",
    "LocalSplit",
    "Modality",
    "TabularSchema",
    "TabularSplit",
    "TaskInfo",
    "TextSpec",
    "get_task",
    "list_partitions",
    "list_tasks",
    "load_local",
    "load_partition",
]
