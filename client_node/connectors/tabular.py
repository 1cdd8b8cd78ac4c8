"""Tabular connector: a CSV or Parquet file with the schema declared in node.toml.

node.toml declares the label column (``target``) and every feature column with its type
(``[data.columns]``: ``float``, ``int``, ``category`` or ``bool``); ``[data.rename]`` maps a local
column name onto the task's feature name. The rows are checked cell by cell against that
declaration and then encoded with the task's agreed :class:`TabularSchema` (fixed ranges and
categories from the federation, never fitted on the data). Other columns are ignored.

Numbers and the task's ranges: a numeric feature is scaled from its agreed range
``[low, high]``, and a finite value outside it is clipped to the range (``low`` or ``high``);
that is the encoding rule and the trainer keeps it. :func:`read_tabular` counts the clipped
values per column so that ``lepton node check-data`` can tell the site. Whether a number is
finite is decided in float64, as the encoder computes (the clipped, scaled value is float32):
``1e308`` is a finite number far above any range and is clipped and counted like ``-500``; a cell
that is infinite (``inf``, ``-Infinity``, or a number too large for float64 such as ``1e309``) is
refused as a bad row (``not_finite``, with its row and column); an empty or NaN cell is a missing
value (the task's fill value where the feature allows missing values, else ``missing_value``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
)
from client_node.connectors.errors import ConnectorError
from client_node.connectors.report import ClippedColumn
from client_node.settings import ColumnType, DataSection
from lepton_fl.datasets.examples import LocalSplit
from lepton_fl.datasets.registry import TaskInfo
from lepton_fl.datasets.tabular import (
    BinaryFeature,
    CategoricalFeature,
    DatasetError,
    Feature,
    NumericFeature,
    TabularSchema,
    make_split,
)

__all__ = ["count_clipped", "load_tabular", "read_tabular"]

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


@dataclass(frozen=True)
class _Table:
    """Rows of a CSV or Parquet file, column by column, and how to name a row in a message."""

    path: Path
    header: tuple[str, ...]
    columns: Mapping[str, Sequence[Any]]
    num_rows: int
    locate: Callable[[int], tuple[str, int]]  # row index -> (words for a message, 1-based row)


class _CellError(Exception):
    def __init__(self, code: str, problem: str, advice: str) -> None:
        super().__init__(problem)
        self.code = code
        self.problem = problem
        self.advice = advice


def load_tabular(data: DataSection, task: TaskInfo) -> LocalSplit:
    """Read, check and encode the node's CSV or Parquet file; split it (seeded, stratified)."""
    return read_tabular(data, task)[0]


def read_tabular(data: DataSection, task: TaskInfo) -> tuple[LocalSplit, tuple[ClippedColumn, ...]]:
    """:func:`load_tabular`'s split, and the declared numeric columns whose values were clipped
    to the task's range (only those with at least one clipped value)."""
    schema = task.schema
    if schema is None or task.modality != "tabular":
        raise ConnectorError(
            f"node.toml [data] reads a {data.source} table, but task {task.name!r} is "
            f"{task.modality} data, not tabular. Choose a tabular task or another source.",
            code="schema_mismatch",
        )
    if data.path is None or data.target is None:  # the settings validator requires both
        raise ConnectorError(
            "node.toml [data] needs path and target for a table.", code="schema_mismatch"
        )
    declared = _declared_features(data, schema)
    table = _read_csv_table(data.path) if data.source == "csv" else _read_parquet(data.path)
    needed = [data.target, *declared]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise ConnectorError(
            f"{_kind(table)} {table.path} has no column {absent[0]!r}, which node.toml "
            f"{'names as target' if absent[0] == data.target else 'declares in [data.columns]'}"
            f" (missing: {absent}). Its columns are {list(table.header)}. Fix the file's header "
            "or node.toml.",
            code="missing_column",
            path=table.path,
            column=absent[0],
        )
    raw: dict[str, list[Any]] = {}
    for column, (declared_type, feature) in declared.items():
        raw[feature.name] = [
            _cell(table, i, column, declared_type, feature) for i in range(table.num_rows)
        ]
    labels = _labels(table, data.target, LabelMapper(task, data.label_values))
    try:
        x = schema.encode(raw, source=str(table.path))
    except DatasetError as err:  # the cell checks above should leave nothing for this
        raise ConnectorError(str(err), code="wrong_type", path=table.path) from err
    if table.num_rows < 2:
        raise ConnectorError(
            f"{_kind(table)} {table.path} has {table.num_rows} row; at least 2 are needed for a "
            "train and a test split. Add more rows.",
            code="too_few_rows",
            path=table.path,
        )
    split = make_split(
        name=data.partition,
        x=x,
        y=labels,
        feature_names=schema.feature_names,
        num_classes=task.num_classes,
        seed=data.seed,
        test_fraction=data.test_fraction,
    )
    return split.local(), count_clipped(declared, raw)


def count_clipped(
    declared: Mapping[str, tuple[ColumnType, Feature]], raw: Mapping[str, Sequence[Any]]
) -> tuple[ClippedColumn, ...]:
    """Per declared numeric column, how many of its checked cells (``raw``, by feature name, as
    :func:`_cell` gives them) the task's encoding clips to ``[low, high]``.

    A missing value (None, or 0 where the feature reads 0 as "not measured") is filled, not
    clipped, and is not counted.
    """
    out: list[ClippedColumn] = []
    for column, (_, feature) in declared.items():
        if not isinstance(feature, NumericFeature):
            continue
        below = above = 0
        for value in raw[feature.name]:
            if value is None or (feature.zero_is_missing and value == 0):
                continue
            if value < feature.low:
                below += 1
            elif value > feature.high:
                above += 1
        if below or above:
            out.append(
                ClippedColumn(
                    column=column,
                    feature=feature.name,
                    low=feature.low,
                    high=feature.high,
                    below=below,
                    above=above,
                )
            )
    return tuple(out)


def _kind(table: _Table) -> str:
    return "The CSV file" if table.path.suffix.lower() != ".parquet" else "The Parquet file"


def _declared_features(
    data: DataSection, schema: TabularSchema
) -> dict[str, tuple[ColumnType, Feature]]:
    """Local column -> (declared type, task feature); refuses a declaration that cannot fit."""
    by_name = {f.name: f for f in schema.features}
    out: dict[str, tuple[ColumnType, Feature]] = {}
    for column, declared_type in data.columns.items():
        name = data.rename.get(column, column)
        feature = by_name.get(name)
        if feature is None:
            renamed = f" (renamed to {name!r})" if name != column else ""
            raise ConnectorError(
                f"node.toml [data.columns] declares {column!r}{renamed}, but task "
                f"{schema.task!r} has no feature of that name; its features are "
                f"{list(by_name)}. Remove the column or map it with [data.rename].",
                code="schema_mismatch",
                column=column,
            )
        allowed = _allowed_types(feature)
        if declared_type not in allowed:
            raise ConnectorError(
                f"node.toml [data.columns] declares {column!r} as {declared_type!r}, but task "
                f"{schema.task!r} encodes feature {name!r} as {_describe(feature)}. Declare it "
                f"as {' or '.join(repr(t) for t in allowed)}.",
                code="schema_mismatch",
                column=column,
            )
        out[column] = (declared_type, feature)
    covered = {f.name for _, f in out.values()}
    missing = [name for name in by_name if name not in covered]
    if missing:
        raise ConnectorError(
            f"task {schema.task!r} needs the features {missing}, which node.toml "
            "[data.columns] does not declare. Declare a column for each (use [data.rename] "
            "when your column has another name).",
            code="schema_mismatch",
        )
    return out


def _allowed_types(feature: Feature) -> tuple[ColumnType, ...]:
    if isinstance(feature, NumericFeature):
        return ("float", "int")
    if isinstance(feature, CategoricalFeature):
        return ("category",)
    values = (*feature.positive, *feature.negative)
    if all(isinstance(v, bool) for v in values):
        return ("bool",)
    if all(isinstance(v, int) for v in values):
        return ("int",)
    return ("category",)


def _describe(feature: Feature) -> str:
    if isinstance(feature, NumericFeature):
        return f"a number in [{feature.low:g}, {feature.high:g}]"
    if isinstance(feature, CategoricalFeature):
        return f"one of the categories {list(feature.categories)}"
    return f"two values, {list(feature.positive)} or {list(feature.negative)}"


def _read_csv_table(path: Path) -> _Table:
    csv_table = read_csv(path)

    def locate(i: int) -> tuple[str, int]:
        line = csv_table.lines[i]
        return f"line {line} (the header is line 1)", line

    return _Table(
        path=path,
        header=csv_table.header,
        columns=csv_table.columns,
        num_rows=len(csv_table),
        locate=locate,
    )


def _read_parquet(path: Path) -> _Table:
    check_file(path, what="Parquet file")
    if path.stat().st_size == 0:
        raise ConnectorError(
            f"The Parquet file {path} is empty (0 bytes). Export the table again.",
            code="empty",
            path=path,
        )
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        columns = table.to_pydict()
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        raise ConnectorError(
            f"The Parquet file {path} cannot be read ({err}). Export it again as Parquet, or "
            'set source = "csv" if it is a CSV file.',
            code="unreadable",
            path=path,
        ) from err
    if table.num_rows == 0:
        raise ConnectorError(
            f"The Parquet file {path} has no rows. Export the data rows too.",
            code="empty",
            path=path,
        )

    def locate(i: int) -> tuple[str, int]:
        return f"row {i + 1} (the first data row is row 1)", i + 1

    return _Table(
        path=path,
        header=tuple(table.column_names),
        columns=columns,
        num_rows=table.num_rows,
        locate=locate,
    )


def _cell(table: _Table, i: int, column: str, declared: ColumnType, feature: Feature) -> Any:
    """One cell as the schema's encoder takes it (None for a missing value), or an error."""
    try:
        value = _convert(table.columns[column][i], declared)
        if value is None:
            if not feature.nullable:
                raise _CellError(
                    "missing_value",
                    "is empty or NaN, but the task's schema needs a value there",
                    "Fill it in or remove the row",
                )
            return None
        _check_domain(value, feature)
        return value
    except _CellError as err:
        where, row = table.locate(i)
        raise ConnectorError(
            f"{_kind(table)} {table.path}, {where}, column {column!r}: the value {err.problem}. "
            f"{err.advice}.",
            code=err.code,
            path=table.path,
            row=row,
            column=column,
        ) from None


def _convert(value: Any, declared: ColumnType) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and is_missing_text(value):
        return None
    if declared in ("float", "int"):
        return _number(value, integral=declared == "int")
    if declared == "bool":
        return _boolean(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    raise _CellError(
        "wrong_type",
        f"is a {type(value).__name__}, but node.toml declares the column 'category'",
        "Store the column as text, or fix its declared type in [data.columns]",
    )


def _number(value: Any, *, integral: bool) -> float | int | None:
    wanted = "int" if integral else "float"
    if isinstance(value, bool) or not isinstance(value, str | int | float | np.number):
        raise _CellError(
            "wrong_type",
            f"is not a number, but node.toml declares the column {wanted!r}",
            "Fix the cell, or fix the column's declared type in [data.columns]",
        )
    try:
        number = float(value)
    except ValueError:
        raise _CellError(
            "wrong_type",
            f"is not a number, but node.toml declares the column {wanted!r}",
            "Fix the cell, or fix the column's declared type in [data.columns]",
        ) from None
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise _CellError(
            "not_finite",
            "is infinite",
            "Replace it with a real measurement, leave the cell empty if the task allows "
            "missing values, or remove the row",
        )
    if integral:
        if not number.is_integer():
            raise _CellError(
                "wrong_type",
                "is not a whole number, but node.toml declares the column 'int'",
                "Fix the cell, or declare the column 'float' in [data.columns]",
            )
        return int(number)
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _CellError(
        "wrong_type",
        "is not a yes/no value (true/false, yes/no or 1/0), but node.toml declares the "
        "column 'bool'",
        "Fix the cell, or fix the column's declared type in [data.columns]",
    )


def _check_domain(value: Any, feature: Feature) -> None:
    if isinstance(feature, CategoricalFeature):
        if value not in feature.categories:
            raise _CellError(
                "unknown_category",
                f"is not one of the task's categories {list(feature.categories)}",
                "Fix the cell (the categories are agreed by the federation; spelling and case "
                "matter) or remove the row",
            )
    elif isinstance(feature, BinaryFeature) and value not in (
        *feature.positive,
        *feature.negative,
    ):
        raise _CellError(
            "unknown_category",
            f"is not one of the task's values {[*feature.positive, *feature.negative]}",
            "Fix the cell (the values are agreed by the federation) or remove the row",
        )


def _labels(table: _Table, column: str, mapper: LabelMapper) -> npt.NDArray[np.int64]:
    out = np.empty(table.num_rows, dtype=np.int64)
    for i, value in enumerate(table.columns[column]):
        missing = value is None or (isinstance(value, str) and is_missing_text(value))
        if isinstance(value, float) and math.isnan(value):
            missing = True
        index = None if missing else mapper(value)
        if index is None:
            where, row = table.locate(i)
            if missing:
                raise ConnectorError(
                    f"{_kind(table)} {table.path}, {where}, column {column!r}: the label is "
                    "empty or NaN. Fill it in or remove the row.",
                    code="missing_value",
                    path=table.path,
                    row=row,
                    column=column,
                )
            raise mapper.outside(
                f"{_kind(table)} {table.path}, {where}, column {column!r},",
                path=table.path,
                row=row,
                column=column,
            )
        out[i] = index
    return out
