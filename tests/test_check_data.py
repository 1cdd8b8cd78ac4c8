"""`lepton node check-data` tells the site the truth about its data: errors, warnings, --strict.

Every case writes a real node.toml and a real data file (CSV, PNG images, JSONL) into tmp_path
and runs the real command. Warnings (a class of the task absent, values clipped to the task's
range) keep exit code 0, and make it 3 under --strict; data that cannot be used exits 1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from test_connectors import CSV_DATA, HEADER, _expected_heart, _heart_rows, _node_toml, _write_csv
from typer.testing import CliRunner

from client_node.connectors import check_node_data
from client_node.runner import load_site_data
from client_node.settings import load_node_settings
from lepton.cli import EXIT_DATA_WARNINGS, app
from lepton.cluster import lepton_command
from lepton_fl.datasets.tabular import stratified_split

AGE = HEADER.index("age")
THALCH = HEADER.index("thalch")
CHOL = HEADER.index("chol")
DISEASE = HEADER.index("disease")


def _check(config: Path, *flags: str) -> Result:
    return CliRunner().invoke(app, ["node", "check-data", "--config", str(config), *flags])


def _heart_site(tmp_path: Path, rows: list[list[str]], data: str = CSV_DATA) -> Path:
    config = _node_toml(tmp_path, data)
    (tmp_path / "data").mkdir(exist_ok=True)
    _write_csv(tmp_path / "data" / "cleveland.csv", HEADER, rows)
    return config


def test_clean_file_passes_strict_without_warnings(tmp_path: Path) -> None:
    config = _heart_site(tmp_path, _heart_rows())

    for flags in ((), ("--strict",)):
        result = _check(config, *flags)
        assert result.exit_code == 0, result.output
        assert "data ok: cleveland: 12 tabular examples, 2 of 2 classes present" in result.output
        assert "no warnings." in result.output
        assert "warning:" not in result.output


def test_one_class_file_warns_and_fails_only_under_strict(tmp_path: Path) -> None:
    rows = _heart_rows()
    for row in rows:
        row[DISEASE] = "0"
    config = _heart_site(tmp_path, rows)

    relaxed = _check(config)
    assert relaxed.exit_code == 0, relaxed.output
    assert "1 of 2 classes present" in relaxed.output
    assert (
        "warning: only 1 of the task's 2 classes is in this data (no example of class '1'): "
        "the federation's model cannot learn class '1' from this site. The node will still "
        "train on this data." in relaxed.output
    )
    assert "1 warning; the node can train on this data" in relaxed.output

    strict = _check(config, "--strict")
    assert strict.exit_code == EXIT_DATA_WARNINGS == 3
    assert "cannot learn class '1' from this site" in strict.output
    assert f"1 warning: exit code {EXIT_DATA_WARNINGS} (--strict)." in strict.output
    assert "data invalid" not in strict.output

    # The installed console script exits with the same code.
    script = subprocess.run(
        lepton_command("node", "check-data", "--config", str(config), "--strict"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert script.returncode == EXIT_DATA_WARNINGS, script.stderr
    assert "cannot learn class '1' from this site" in script.stdout


def test_values_outside_the_range_are_counted_per_column_and_clipped(tmp_path: Path) -> None:
    rows = _heart_rows()
    rows[0][AGE] = "-500"
    rows[1][AGE] = "1e308"  # finite in float64 (the encoder's precision): clipped, not an error
    rows[2][AGE] = "80"  # the range's bound: not clipped
    rows[6][THALCH] = "999"
    assert rows[4][CHOL] == "0"  # chol reads 0 as "not measured": filled, never clipped
    config = _heart_site(tmp_path, rows)

    relaxed = _check(config)
    assert relaxed.exit_code == 0, relaxed.output
    assert (
        "warning: column age: 2 values outside [20, 80] were clipped to the range "
        "(1 below, 1 above)" in relaxed.output
    )
    assert (
        "warning: column thalch: 1 value outside [60, 210] was clipped to the range (1 above)"
        in relaxed.output
    )
    assert "chol" not in relaxed.output
    assert "2 warnings; the node can train on this data" in relaxed.output

    strict = _check(config, "--strict")
    assert strict.exit_code == EXIT_DATA_WARNINGS
    assert "2 warnings: exit code 3 (--strict)." in strict.output

    # Clipping stays the encoding rule: the trainer gets the schema's encoding of the raw values.
    settings = load_node_settings(config)
    split, error = load_site_data(settings)
    assert error is None
    x, y = _expected_heart(rows)
    train_idx, _ = stratified_split(y, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(split.train.inputs[0], x[train_idx])
    assert np.isfinite(x).all()
    assert x[0, 0] == -1.0  # age -500: clipped to low, scaled to -1
    assert x[1, 0] == 1.0  # age 1e308: clipped to high, scaled to +1
    report = check_node_data(settings)
    np.testing.assert_array_equal(report.split.train.inputs[0], split.train.inputs[0])
    assert [(c.column, c.below, c.above) for c in report.clipped] == [
        ("age", 1, 1),
        ("thalch", 0, 1),
    ]


def test_clipped_counts_name_the_files_column_and_the_tasks_feature(tmp_path: Path) -> None:
    header = ["patient_age" if name == "age" else name for name in HEADER]
    rows = _heart_rows()
    rows[3][AGE] = "150"
    data = CSV_DATA.replace('age = "float"', 'patient_age = "float"') + (
        '\n\n[data.rename]\npatient_age = "age"'
    )
    config = _node_toml(tmp_path, data)
    (tmp_path / "data").mkdir()
    _write_csv(tmp_path / "data" / "cleveland.csv", header, rows)

    result = _check(config)

    assert result.exit_code == 0, result.output
    assert (
        "warning: column patient_age (the task's 'age'): 1 value outside [20, 80] was clipped"
        in result.output
    )


@pytest.mark.parametrize("cell", ["1e309", "-1e400", "+inf", "-Infinity"])
def test_non_finite_values_are_bad_rows_with_their_line(tmp_path: Path, cell: str) -> None:
    rows = _heart_rows()
    rows[1][AGE] = cell
    config = _heart_site(tmp_path, rows)

    result = _check(config)

    assert result.exit_code == 1
    assert "data invalid [not_finite]" in result.output
    assert "line 3 (the header is line 1), column 'age': the value is infinite" in result.output
    assert cell not in result.output  # the message never quotes a cell
    # What the coordinator would get: the code and the column, no line, count or value.
    split, refusal = load_site_data(load_node_settings(config))
    assert len(split.train) == 0
    assert refusal is not None
    assert "not_finite in column 'age'" in refusal
    for private in ("line 3", cell, "cleveland.csv", "clipped"):
        assert private not in refusal


def test_nan_in_a_column_without_missing_values_is_a_missing_value(tmp_path: Path) -> None:
    rows = _heart_rows()
    rows[1][AGE] = "nan"
    config = _heart_site(tmp_path, rows)

    result = _check(config, "--strict")

    assert result.exit_code == 1
    assert "data invalid [missing_value]" in result.output
    assert "line 3 (the header is line 1), column 'age'" in result.output


def test_image_folder_with_one_class_warns(tmp_path: Path) -> None:
    """Images have no range to clip (pixels 0-255 are scaled and normalised); classes count."""
    for k in range(3):
        path = tmp_path / "panels" / "functional" / f"cell{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=40 * k).save(path)
    config = _node_toml(
        tmp_path, 'task = "solar_defects"\nsource = "image_folder"\npath = "panels"'
    )

    relaxed = _check(config)
    assert relaxed.exit_code == 0, relaxed.output
    assert "3 image examples, 1 of 2 classes present" in relaxed.output
    assert "cannot learn class 'defective' from this site" in relaxed.output
    assert "clipped" not in relaxed.output
    assert _check(config, "--strict").exit_code == EXIT_DATA_WARNINGS


def test_text_file_without_a_class_warns(tmp_path: Path) -> None:
    """Texts have no range to clip (the tokenizer pads or truncates to max_length)."""
    reviews = [
        ("works well, no side effects", "positive"),
        ("made me dizzy for days", "negative"),
        ("helped with the pain", "positive"),
        ("stopped after a week, nausea", "negative"),
    ]
    (tmp_path / "reviews.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in reviews)
    )
    config = _node_toml(
        tmp_path, 'task = "drug_reviews_tiny"\nsource = "jsonl"\npath = "reviews.jsonl"'
    )

    relaxed = _check(config)
    assert relaxed.exit_code == 0, relaxed.output
    assert "2 of 3 classes present" in relaxed.output
    assert (
        "only 2 of the task's 3 classes are in this data (no example of class 'neutral')"
        in relaxed.output
    )
    strict = _check(config, "--strict")
    assert strict.exit_code == EXIT_DATA_WARNINGS
    assert "1 warning: exit code 3 (--strict)." in strict.output
