"""Inputs only, for predictions: a local file read without a label column.

:func:`load_prediction_inputs` reads what a node wants a released model to predict: a CSV or
Parquet table (tabular tasks), a JSONL or CSV file with a text column (text tasks), or an image
folder / a single image (image tasks). Every row is checked exactly as the training connectors
check it, with the same :class:`ConnectorError` messages (file, row, column, what to do; never a
cell's value), and prepared with the task's agreed encoding. Each row keeps an identifier for the
output: its line in a CSV or JSONL file, its row in a Parquet file, or an image's file name.

Tabular columns are named as the task's features and their types come from the task's schema
(numbers as ``float``, categories as ``category``, two-valued features as ``bool``/``int``/
``category`` as the schema writes them). A node.toml ``[data]`` section, when given, supplies
its ``[data.columns]`` and ``[data.rename]`` instead (and ``text_column`` for text); its
``target`` column is not needed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from client_node.connectors.common import read_csv
from client_node.connectors.errors import ConnectorError
from client_node.connectors.images import prepare_image
from client_node.connectors.tabular import (
    _allowed_types,
    _cell,
    _declared_features,
    _kind,
    _read_csv_table,
    _read_parquet,
    _Table,
)
from client_node.connectors.text import (
    Tokenize,
    _text,
    _tokenise,
    no_tokenizer,
    read_jsonl_records,
)
from client_node.settings import TABULAR_SOURCES, TEXT_SOURCES, ColumnType, DataSection
from lepton_fl.datasets.examples import Modality
from lepton_fl.datasets.registry import TaskInfo
from lepton_fl.datasets.tabular import DatasetError, TabularSchema

__all__ = ["PredictionInputs", "load_prediction_inputs"]

_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
_NO_TARGET = "\x00no-target"
# Without node.toml, the column types are the task's, not a declaration: say so.
_DECLARATION_WORDS = (
    (", or fix the column's declared type in [data.columns]", ""),
    (", or fix its declared type in [data.columns]", ""),
    (", or declare the column 'float' in [data.columns]", ""),
    ("node.toml declares the column", "the task encodes the column as"),
)


@dataclass(frozen=True)
class PredictionInputs:
    """Model inputs for ``len(ids)`` rows of one local file, and how to name each row.

    ``inputs`` are what the model takes (see ``lepton_fl.datasets.examples``); ``ids[i]`` names
    row ``i`` in the output, under the column ``id_column``: ``"line"`` (CSV, the header is line
    1; JSONL), ``"row"`` (Parquet, the first data row is 1) or ``"file"`` (images, relative to
    the folder).
    """

    path: Path
    modality: Modality
    inputs: tuple[npt.NDArray[np.generic], ...]
    ids: tuple[str, ...]
    id_column: str

    def __len__(self) -> int:
        return len(self.ids)


def load_prediction_inputs(
    path: Path,
    task: TaskInfo,
    *,
    data: DataSection | None = None,
    tokenize: Tokenize | None = None,
) -> PredictionInputs:
    """Read and check ``path`` (no labels) as model inputs for ``task``; ConnectorError if not.

    ``data``: the node's ``[data]`` section, for its column declarations and renames (tables)
    or its ``text_column`` (text). ``tokenize`` (text tasks) defaults to the task's tokenizer.
    """
    if not path.exists():
        raise ConnectorError(
            f"The input {path} does not exist. Give the file (or image folder) to predict "
            "with --input.",
            code="missing_file",
            path=path,
        )
    if task.modality == "image":
        return _images(path, task)
    if path.is_dir():
        raise ConnectorError(
            f"The input {path} is a folder; task {task.name!r} is {task.modality} data, which "
            "is read from a file. Give the file itself with --input.",
            code="unreadable",
            path=path,
        )
    if task.modality == "text":
        return _texts(path, task, data, tokenize)
    return _table(path, task, data)


# -- tables ---------------------------------------------------------------------------------------


def _inferred_columns(schema: TabularSchema) -> dict[str, ColumnType]:
    """Every feature as a column of its own name, typed as the task's schema encodes it."""
    return {feature.name: _allowed_types(feature)[0] for feature in schema.features}


def _table(path: Path, task: TaskInfo, data: DataSection | None) -> PredictionInputs:
    schema = task.schema
    if schema is None:
        raise ConnectorError(
            f"Task {task.name!r} has no agreed feature schema, so {path} cannot be encoded for "
            "it. This release's task is not tabular: give an image or a text input.",
            code="schema_mismatch",
            path=path,
        )
    if data is not None and data.source in TABULAR_SOURCES and data.columns:
        declaration = DataSection(
            task=task.name,
            partition=data.partition,
            source=data.source,
            path=path,
            target=data.target,
            columns=data.columns,
            rename=data.rename,
        )
    else:
        # no declaration: the columns carry the task's feature names (target only to satisfy
        # the section's validation; it is never read)
        declaration = DataSection(
            task=task.name,
            partition=path.stem or "input",
            source="csv",
            path=path,
            target=_NO_TARGET,
            columns=_inferred_columns(schema),
        )
    declared = _declared_features(declaration, schema)
    table: _Table = (
        _read_parquet(path) if path.suffix.lower() in _PARQUET_SUFFIXES else _read_csv_table(path)
    )
    absent = [column for column in declared if column not in table.columns]
    if absent:
        source = "node.toml [data.columns]" if data is not None and data.columns else None
        needs = f"which {source} declares" if source else f"a feature of task {task.name!r}"
        raise ConnectorError(
            f"{_kind(table)} {table.path} has no column {absent[0]!r}, {needs} (missing: "
            f"{absent}). Its columns are {list(table.header)}. Name the columns as the task's "
            "features, or pass --config with a node.toml whose [data.columns] and [data.rename] "
            "map your columns onto them.",
            code="missing_column",
            path=table.path,
            column=absent[0],
        )
    try:
        raw = {
            feature.name: [
                _cell(table, i, column, declared_type, feature) for i in range(table.num_rows)
            ]
            for column, (declared_type, feature) in declared.items()
        }
    except ConnectorError as err:
        if declaration.target != _NO_TARGET:
            raise
        raise _without_node_toml(err) from None
    try:
        x = schema.encode(raw, source=str(table.path))
    except DatasetError as err:  # the cell checks above leave nothing for this
        raise ConnectorError(str(err), code="wrong_type", path=table.path) from err
    parquet = path.suffix.lower() in _PARQUET_SUFFIXES
    ids = tuple(str(table.locate(i)[1]) for i in range(table.num_rows))
    return PredictionInputs(
        path=path,
        modality="tabular",
        inputs=(x,),
        ids=ids,
        id_column="row" if parquet else "line",
    )


def _without_node_toml(err: ConnectorError) -> ConnectorError:
    message = str(err)
    for old, new in _DECLARATION_WORDS:
        message = message.replace(old, new)
    return ConnectorError(message, code=err.code, path=err.path, row=err.row, column=err.column)


# -- text -----------------------------------------------------------------------------------------


def _texts(
    path: Path, task: TaskInfo, data: DataSection | None, tokenize: Tokenize | None
) -> PredictionInputs:
    spec = task.text
    if spec is None:
        raise ConnectorError(
            f"Text task {task.name!r} does not say how its texts are tokenised; {path} cannot "
            "be prepared for it.",
            code="no_tokenizer",
            path=path,
        )
    column = data.text_column if data is not None and data.source in TEXT_SOURCES else "text"
    jsonl = path.suffix.lower() in _JSONL_SUFFIXES
    texts: list[str] = []
    ids: list[str] = []
    if jsonl:
        kind, noun = "The JSONL file", "field"
        for record in read_jsonl_records(path, text_column=column, label_column=None):
            at = f"{kind} {path}, {record.where}"
            if not record.has_text:
                raise ConnectorError(
                    f"{at} has no field {column!r}. Add it to every line, or pass --config "
                    "with a node.toml whose [data].text_column names the right field.",
                    code="missing_column",
                    path=path,
                    row=record.row,
                    column=column,
                )
            texts.append(
                _text(
                    record.text,
                    at=f"{at}, {noun} {column!r}",
                    path=path,
                    row=record.row,
                    column=column,
                )
            )
            ids.append(str(record.row))
    else:
        table = read_csv(path)
        if column not in table.columns:
            raise ConnectorError(
                f"The CSV file {path} has no column {column!r}; its columns are "
                f"{list(table.header)}. Fix the header, or pass --config with a node.toml "
                "whose [data].text_column names the right column.",
                code="missing_column",
                path=path,
                column=column,
            )
        for value, line in zip(table.columns[column], table.lines, strict=True):
            at = f"The CSV file {path}, line {line} (the header is line 1), column {column!r}"
            texts.append(_text(value, at=at, path=path, row=line, column=column))
            ids.append(str(line))
    if not texts:
        raise ConnectorError(
            f"The JSONL file {path} has no records. Put one text per line.",
            code="empty",
            path=path,
        )
    if tokenize is None:
        from lepton_fl.models import load_tokenizer

        with contextlib.suppress(ValueError):  # unknown or missing: refused just below
            tokenize = load_tokenizer(spec.tokenizer, spec.max_length)
    if tokenize is None:
        raise no_tokenizer(task, spec.tokenizer, path)
    inputs = _tokenise(tokenize, texts, max_length=spec.max_length, tokenizer=spec.tokenizer)
    return PredictionInputs(
        path=path, modality="text", inputs=inputs, ids=tuple(ids), id_column="line"
    )


# -- images ---------------------------------------------------------------------------------------


def _images(path: Path, task: TaskInfo) -> PredictionInputs:
    spec = task.image
    if spec is None:
        raise ConnectorError(
            f"Image task {task.name!r} does not say how its images are prepared; {path} cannot "
            "be prepared for it.",
            code="schema_mismatch",
            path=path,
        )
    if path.is_file():
        return PredictionInputs(
            path=path,
            modality="image",
            inputs=(prepare_image(path, spec)[np.newaxis],),
            ids=(path.name,),
            id_column="file",
        )
    try:
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    except OSError as err:
        raise ConnectorError(
            f"The image folder {path} cannot be read ({err.strerror or err}). Check that the "
            "node's user may read it.",
            code="unreadable",
            path=path,
        ) from err
    if not files:
        raise ConnectorError(
            f"The image folder {path} holds no images. Put the images to predict in it (or in "
            "subfolders), or give a single image file with --input.",
            code="empty",
            path=path,
        )
    pixels = np.stack([prepare_image(file, spec) for file in files]).astype(np.float32)
    return PredictionInputs(
        path=path,
        modality="image",
        inputs=(pixels,),
        ids=tuple(file.relative_to(path).as_posix() for file in files),
        id_column="file",
    )
