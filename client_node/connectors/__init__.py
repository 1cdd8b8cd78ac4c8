"""A node's own data, checked and prepared for the task before any training.

:func:`load_node_data` is the one entry point: it reads ``[data]`` of node.toml (a registered
demo partition, a CSV or Parquet table, an image folder, or a JSONL/CSV text file), checks every
row against the task's agreed encoding and gives a :class:`LocalSplit`. Anything wrong raises
:class:`ConnectorError`, whose message names the file, row and column and says what to do;
it never quotes a cell's value, because the trainer sends it to the coordinator as the reason
of its ``data_invalid`` refusal.

:func:`check_node_data` (``lepton node check-data``) loads the same split and adds the warnings a
site should see (a class of the task absent, values clipped to the task's range); see
:mod:`client_node.connectors.report`. Those stay on the site's machine.
"""

from __future__ import annotations

import contextlib

from client_node.connectors.common import empty_split, task_labels
from client_node.connectors.errors import ConnectorError
from client_node.connectors.images import load_image_folder, prepare_image
from client_node.connectors.inputs import PredictionInputs, load_prediction_inputs
from client_node.connectors.report import ClippedColumn, DataReport
from client_node.connectors.tabular import load_tabular, read_tabular
from client_node.connectors.text import TOKEN_KEYS, Tokenize, load_text
from client_node.settings import TABULAR_SOURCES, TEXT_SOURCES, DataSection, NodeSettings
from lepton_fl.datasets.examples import LocalSplit
from lepton_fl.datasets.registry import TaskInfo, get_task, load_local
from lepton_fl.datasets.tabular import DatasetError

__all__ = [
    "TOKEN_KEYS",
    "ClippedColumn",
    "ConnectorError",
    "DataReport",
    "PredictionInputs",
    "Tokenize",
    "check_node_data",
    "describe_split",
    "empty_split",
    "load_image_folder",
    "load_node_data",
    "load_prediction_inputs",
    "load_tabular",
    "load_text",
    "prepare_image",
]


def load_node_data(
    settings: NodeSettings | DataSection,
    *,
    task: TaskInfo | None = None,
    tokenize: Tokenize | None = None,
) -> LocalSplit:
    """The node's data for its task, checked and split; :class:`ConnectorError` otherwise.

    ``task`` defaults to the registered task named in ``[data].task``; ``tokenize`` (text
    sources only) defaults to the tokenizer the task's ``TextSpec`` names.
    """
    return check_node_data(settings, task=task, tokenize=tokenize).split


def check_node_data(
    settings: NodeSettings | DataSection,
    *,
    task: TaskInfo | None = None,
    tokenize: Tokenize | None = None,
) -> DataReport:
    """:func:`load_node_data`'s split with its warnings (absent classes, clipped values).

    The split is the one the trainer gets; the warnings are for the site only (printed by
    ``lepton node check-data``), never for a message to the coordinator.
    """
    data = settings.data if isinstance(settings, NodeSettings) else settings
    if task is None:
        try:
            task = get_task(data.task)
        except DatasetError as err:
            raise ConnectorError(f"node.toml [data].task: {err}.", code=err.code) from err
    labels = task_labels(task)
    if data.source == "builtin":
        try:
            split = load_local(
                task.name, data.partition, seed=data.seed, test_fraction=data.test_fraction
            )
        except DatasetError as err:
            raise ConnectorError(
                f"node.toml [data] (task {task.name!r}, partition {data.partition!r}): {err}",
                code=err.code,
            ) from err
        return DataReport(split=split, labels=labels)
    if data.source in TABULAR_SOURCES:
        split, clipped = read_tabular(data, task)
        return DataReport(split=split, labels=labels, clipped=clipped)
    if data.source in TEXT_SOURCES:
        if tokenize is None and task.text is not None:  # the task's agreed tokenizer
            from lepton_fl.models import load_tokenizer  # torch: only for text sources

            with contextlib.suppress(ValueError):  # unknown or missing: load_text says so
                tokenize = load_tokenizer(task.text.tokenizer, task.text.max_length)
        return DataReport(split=load_text(data, task, tokenize), labels=labels)
    # images: pixels are scaled from 0-255 and normalised by the task; nothing is clipped
    return DataReport(split=load_image_folder(data, task), labels=labels)


def describe_split(split: LocalSplit) -> str:
    """One line for a person: rows, classes, train/test sizes and input shape."""
    n = len(split.train) + len(split.test)
    present = sorted({int(v) for v in split.train.labels} | {int(v) for v in split.test.labels})
    return (
        f"{split.name}: {n} {split.modality} examples, {len(present)} of {split.num_classes} "
        f"classes present, {len(split.train)} train / {len(split.test)} test, input shape "
        f"{split.input_shape}"
    )
