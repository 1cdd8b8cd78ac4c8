"""Pieces every connector shares: reading CSV text, mapping labels, the seeded split."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client_node.connectors.errors import ConnectorError
from lepton_fl.datasets.examples import Examples, LocalSplit, Modality
from lepton_fl.datasets.registry import TaskInfo
from lepton_fl.datasets.tabular import stratified_split

__all__ = [
    "CsvTable",
    "LabelMapper",
    "check_file",
    "empty_split",
    "is_missing_text",
    "read_csv",
    "split_examples",
    "task_labels",
]

MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a"})
"""Cell texts that mean "no value" in a CSV file (compared without case or surrounding blanks)."""


def is_missing_text(text: str) -> bool:
    """Whether a CSV cell's text means "no value"."""
    return text.strip().lower() in MISSING_TOKENS


def check_file(path: Path, *, what: str = "data file") -> None:
    """Refuse a path that does not exist or is not a regular file."""
    if not path.exists():
        raise ConnectorError(
            f"The {what} {path} does not exist. Fix [data].path in node.toml (relative paths "
            "are relative to node.toml) or put the file there.",
            code="missing_file",
            path=path,
        )
    if not path.is_file():
        raise ConnectorError(
            f"The {what} {path} is a folder, not a file. Point [data].path at the file itself.",
            code="unreadable",
            path=path,
        )


@dataclass(frozen=True)
class CsvTable:
    """A CSV file's header and rows as text, each row with its line number in the file."""

    path: Path
    header: tuple[str, ...]
    lines: tuple[int, ...]  # 1-based line of each row; the header is line 1
    columns: Mapping[str, Sequence[str]]

    def __len__(self) -> int:
        return len(self.lines)


def read_csv(path: Path) -> CsvTable:
    """Read a UTF-8 CSV file with a header line; every row must have as many fields."""
    check_file(path, what="CSV file")
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open("rb") as raw:
            if b"\x00" in raw.read(65536):
                raise ConnectorError(
                    f"The CSV file {path} is binary, not text (is it a Parquet or Excel "
                    'file?). Export it as UTF-8 CSV, or set source = "parquet" for Parquet.',
                    code="unreadable",
                    path=path,
                )
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = [name.strip() for name in next(reader)]
            except StopIteration:
                raise ConnectorError(
                    f"The CSV file {path} is empty. It needs a header line with the column "
                    "names and at least two rows.",
                    code="empty",
                    path=path,
                ) from None
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise ConnectorError(
                        f"The CSV file {path}, line {reader.line_num} (the header is line 1), "
                        f"has {len(row)} fields but the header has {len(header)}. Fix that line "
                        "(a stray comma, or a text with a comma that needs quotes).",
                        code="unreadable",
                        path=path,
                        row=reader.line_num,
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise ConnectorError(
            f"The CSV file {path} is not UTF-8 text ({err.reason} at byte {err.start}). Save it "
            "as UTF-8 CSV.",
            code="unreadable",
            path=path,
        ) from err
    except csv.Error as err:
        raise ConnectorError(
            f"The CSV file {path} cannot be read as CSV ({err}). Save it as comma-separated "
            "UTF-8 text.",
            code="unreadable",
            path=path,
        ) from err
    except OSError as err:
        raise ConnectorError(
            f"The CSV file {path} cannot be read ({err.strerror or err}). Check that the node's "
            "user may read it.",
            code="unreadable",
            path=path,
        ) from err
    seen: set[str] = set()
    for name in header:
        if not name:
            raise ConnectorError(
                f"The CSV file {path} has a column without a name in its header (line 1). "
                "Name every column.",
                code="unreadable",
                path=path,
                row=1,
            )
        if name in seen:
            raise ConnectorError(
                f"The CSV file {path} names column {name!r} twice in its header (line 1). "
                "Give every column its own name.",
                code="unreadable",
                path=path,
                row=1,
                column=name,
            )
        seen.add(name)
    if not rows:
        raise ConnectorError(
            f"The CSV file {path} has a header but no rows. Export the data rows too.",
            code="empty",
            path=path,
        )
    columns = {name: tuple(row[k] for row in rows) for k, name in enumerate(header)}
    return CsvTable(path=path, header=tuple(header), lines=tuple(lines), columns=columns)


def task_labels(task: TaskInfo) -> tuple[str, ...]:
    """The task's label names, index = label (``"0"``, ``"1"``, ... when it names none)."""
    return task.labels or tuple(str(k) for k in range(task.num_classes))


def _label_text(value: Any) -> str | None:
    """A label value as text; None when it is not a plain value (a list, a dict, NaN)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return None
        return str(int(value)) if float(value).is_integer() else str(float(value))
    if isinstance(value, str):
        return value.strip()
    return None


class LabelMapper:
    """Maps a local label value onto the index of one of the task's labels.

    A value matches a label of the same name, or, through ``[data.label_values]``, the label
    it is mapped to. The mapping itself is checked against the task's labels.
    """

    def __init__(self, task: TaskInfo, label_values: Mapping[str, str]) -> None:
        self.labels = task_labels(task)
        index = {name: k for k, name in enumerate(self.labels)}
        wrong = sorted({v for v in label_values.values() if v not in index})
        if wrong:
            raise ConnectorError(
                f"node.toml [data.label_values] maps onto {wrong}, which are not labels of task "
                f"{task.name!r}; its labels are {list(self.labels)}.",
                code="schema_mismatch",
            )
        self._index = index
        self._mapping = {str(k).strip(): index[v] for k, v in label_values.items()}

    def __call__(self, value: Any) -> int | None:
        """The label index of ``value``, or None when it is none of the task's labels."""
        text = _label_text(value)
        if text is None:
            return None
        if text in self._mapping:
            return self._mapping[text]
        return self._index.get(text)

    def outside(
        self, where: str, *, path: Path, row: int | None, column: str | None
    ) -> ConnectorError:
        """The error for a label that is none of the task's labels."""
        return ConnectorError(
            f"{where} holds a label that is not one of the task's labels {list(self.labels)}. "
            "Fix the label, remove the row, or map your label values onto the task's labels in "
            "node.toml [data.label_values].",
            code="unknown_label",
            path=path,
            row=row,
            column=column,
        )


def split_examples(
    *,
    name: str,
    modality: Modality,
    inputs: tuple[npt.NDArray[np.generic], ...],
    labels: npt.NDArray[np.int64],
    num_classes: int,
    seed: int,
    test_fraction: float,
    path: Path,
) -> LocalSplit:
    """A seeded train/test split, stratified on the label (as the registered tasks split)."""
    if len(labels) < 2:
        raise ConnectorError(
            f"{path} has {len(labels)} usable example(s); at least 2 are needed for a train "
            "and a test split. Add more rows.",
            code="too_few_rows",
            path=path,
        )
    train_idx, test_idx = stratified_split(labels, test_fraction=test_fraction, seed=seed)
    if len(test_idx) == 0:  # every class has a single row: keep one row for testing
        test_idx, train_idx = train_idx[:1], train_idx[1:]

    def take(idx: npt.NDArray[np.int64]) -> Examples:
        return Examples(
            inputs=tuple(np.ascontiguousarray(a[idx]) for a in inputs),
            labels=np.ascontiguousarray(labels[idx], dtype=np.int64),
        )

    return LocalSplit(
        name=name,
        modality=modality,
        train=take(train_idx),
        test=take(test_idx),
        num_classes=num_classes,
    )


def empty_split(name: str, modality: Modality, num_classes: int) -> LocalSplit:
    """A split with no rows: what a trainer holds while its data is refused."""
    nothing = Examples(
        inputs=(np.zeros((0, 1), dtype=np.float32),), labels=np.zeros(0, dtype=np.int64)
    )
    return LocalSplit(
        name=name, modality=modality, train=nothing, test=nothing, num_classes=num_classes
    )
