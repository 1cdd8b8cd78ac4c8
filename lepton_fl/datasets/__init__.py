"""Task vocabulary: model-ready local data, agreed tabular encodings, partitioning, the registry.

No task is defined here: the demo tasks live in ``lepton_demo``; a site registers its own with
:func:`register_task` or an entry point in the group ``lepton_fl.tasks`` (see ``registry``).
"""

from lepton_fl.datasets.examples import Examples, ImageSpec, LocalSplit, Modality, TextSpec
from lepton_fl.datasets.registry import (
    ENTRY_POINT_GROUP,
    TASKS,
    TaskInfo,
    get_task,
    list_partitions,
    list_tasks,
    load_local,
    load_partition,
    register_task,
    task_source,
    unregister_task,
)
from lepton_fl.datasets.tabular import DatasetError, TabularSchema, TabularSplit

__all__ = [
    "ENTRY_POINT_GROUP",
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
    "register_task",
    "task_source",
    "unregister_task",
]
