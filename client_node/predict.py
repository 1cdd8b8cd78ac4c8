"""Predictions with a signed release, at the node: the model serves where the data lives.

:func:`predict_file` verifies a release directory (manifest signature with the coordinator's
public key, then the weights' digest), rebuilds the federation's model from the spec the
release carries (checked against its signed digest), loads the released weights, reads a local
file without labels through the node's connectors, and writes a CSV of predictions: the row's
identifier, the predicted label (the task's label name) and one probability column per class.
The CSV is written atomically (a temporary file in the same folder, then a rename). Nothing is
sent anywhere.

Refusals: :class:`~lepton_fl.crypto.release.ReleaseError` for the release (tampered, unsigned,
signed by another key, a spec or weights that do not fit), :class:`ConnectorError` for the
input file, :class:`PredictionError` for the output path. Each message says what to do.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from client_node.connectors.common import task_labels
from client_node.connectors.inputs import PredictionInputs, load_prediction_inputs
from client_node.connectors.text import Tokenize
from client_node.settings import DataSection
from lepton_fl.config import FederationSpec, describe_validation_error
from lepton_fl.crypto.release import MANIFEST_FILE, MODEL_FILE, ReleaseError, verify_release
from lepton_fl.datasets.registry import TaskInfo, get_task
from lepton_fl.datasets.tabular import DatasetError
from lepton_fl.files import write_file

__all__ = [
    "PredictionError",
    "PredictionReport",
    "default_output_path",
    "load_release_model",
    "predict_file",
]

_BATCH = 256
_ASK_AGAIN = "ask the coordinator's admin for the release again"


class PredictionError(ValueError):
    """The output cannot be written where asked; ``code``: ``output-is-input``,
    ``output-in-release``, ``output-unwritable``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PredictionReport:
    """What :func:`predict_file` did: which release served how many rows, and where to."""

    release_id: str | None
    version: int | None
    federation: str | None
    task: str
    model: str
    model_digest: str
    rows: int
    labels: tuple[str, ...]
    counts: Mapping[str, int]  # predicted label -> rows
    output_path: Path


@dataclass(frozen=True)
class ReleasedModel:
    """A verified release, rebuilt: the federation spec, its task and the model in eval mode."""

    manifest: Mapping[str, Any]
    spec: FederationSpec
    task: TaskInfo
    model: Any  # torch.nn.Module; torch is imported lazily


def default_output_path(input_path: Path) -> Path:
    """``<input stem>.predictions.csv`` beside the input (beside the folder, for a folder)."""
    name = input_path.name if input_path.is_dir() else input_path.stem
    return input_path.parent / f"{name or 'input'}.predictions.csv"


def _spec_of(manifest: Mapping[str, Any], where: Path) -> FederationSpec:
    """The federation spec the release carries, checked against its signed digest."""
    federation = manifest.get("federation")
    raw = federation.get("spec") if isinstance(federation, Mapping) else None
    expected = federation.get("spec_digest") if isinstance(federation, Mapping) else None
    if not isinstance(raw, Mapping) or not isinstance(expected, str):
        raise ReleaseError(
            "release-no-spec",
            f"{where}: the signed manifest has no federation.spec and federation.spec_digest, "
            "so the node cannot rebuild the model it was trained as. Ask the coordinator's "
            "admin for a release made by a current coordinator.",
        )
    try:
        spec = FederationSpec.model_validate(dict(raw))
    except ValidationError as err:
        raise ReleaseError(
            "release-spec-invalid",
            f"{where}: the release's federation.spec is not a federation spec this node "
            f"understands ({describe_validation_error(err)}). Upgrade lepton on this node to "
            "the coordinator's version, or ask the coordinator's admin about the release.",
        ) from err
    actual = spec.digest()
    if actual != expected:
        raise ReleaseError(
            "release-spec-mismatch",
            f"{where}: the release's federation.spec has digest {actual}, but the signed "
            f"federation.spec_digest is {expected}. The node would rebuild another model than "
            f"the one released: do not use it; upgrade lepton on this node to the coordinator's "
            f"version, or {_ASK_AGAIN}.",
        )
    return spec


def _ordered_weights(
    weights: Mapping[str, npt.NDArray[np.generic]], where: Path
) -> list[npt.NDArray[np.generic]]:
    """The release's tensors ``layer_000``, ``layer_001``, ... in order; refuse other names."""
    names = [f"layer_{i:03d}" for i in range(len(weights))]
    if sorted(weights) != names:
        unexpected = sorted(set(weights) - set(names))
        raise ReleaseError(
            "release-weights-mismatch",
            f"{where}: the weights are not named layer_000 .. layer_{len(weights) - 1:03d} "
            f"(unexpected: {unexpected[:5]}); this is not a lepton release of a federation's "
            f"model. Do not use it; {_ASK_AGAIN}.",
        )
    return [weights[name] for name in names]


def load_release_model(
    release_dir: Path, *, public_key_pem: str, device: str = "cpu"
) -> ReleasedModel:
    """Verify ``release_dir`` and rebuild its model (eval mode, on ``device``); ReleaseError."""
    manifest, weights = verify_release(release_dir, public_key_pem)
    manifest_path = release_dir / MANIFEST_FILE
    spec = _spec_of(manifest, manifest_path)
    try:
        task = get_task(spec.task)
    except DatasetError as err:
        raise ReleaseError(
            "release-unknown-task",
            f"{manifest_path}: the release is a model for task {spec.task!r}, which this node "
            f"does not know ({err}). Upgrade lepton on this node, or use a release of a task "
            "it serves.",
        ) from err

    from lepton_fl.model_init import input_shape
    from lepton_fl.models import build_model, model_spec, set_weights

    model = build_model(
        model_spec(spec.model),
        input_shape=input_shape(task),
        num_classes=task.num_classes,
        seed=spec.seed,
    )
    try:
        set_weights(model, _ordered_weights(weights, release_dir / MODEL_FILE))
    except ValueError as err:
        raise ReleaseError(
            "release-weights-mismatch",
            f"{release_dir / MODEL_FILE}: the weights do not fit the {spec.model.name!r} model "
            f"of task {spec.task!r} ({err}). Do not use them; upgrade lepton on this node to the "
            f"coordinator's version, or {_ASK_AGAIN}.",
        ) from err
    model.to(_device(device))
    model.eval()
    return ReleasedModel(manifest=manifest, spec=spec, task=task, model=model)


def _device(name: str) -> Any:
    """``auto`` (CUDA if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<i>``."""
    import torch

    key = name.strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    from client_node.trainer.dp_sgd import resolve_device  # imports Opacus: only for CUDA

    return resolve_device(name)


def predict_probabilities(
    model: Any, inputs: tuple[npt.NDArray[np.generic], ...], *, batch_size: int = _BATCH
) -> npt.NDArray[np.float64]:
    """Class probabilities ``(n, num_classes)`` of ``model(*inputs)``, batched, eval mode."""
    import torch

    from client_node.trainer.inputs import as_tensor

    device = next(model.parameters()).device
    model.eval()
    n = len(inputs[0])
    parts: list[npt.NDArray[np.float64]] = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = (as_tensor(a[start : start + batch_size]).to(device) for a in inputs)
            logits = model(*batch).to("cpu", dtype=torch.float64)
            parts.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(parts, axis=0)


def _check_output(output_path: Path, input_path: Path, release_dir: Path) -> None:
    out = output_path.resolve()
    if out == input_path.resolve() or (input_path.is_dir() and out.is_relative_to(input_path)):
        raise PredictionError(
            "output-is-input",
            f"The output {output_path} is the input (or inside the input folder): predictions "
            "never overwrite the data. Choose another file with --output.",
        )
    if out.is_relative_to(release_dir.resolve()):
        raise PredictionError(
            "output-in-release",
            f"The output {output_path} is inside the release directory {release_dir}: a "
            "release is never modified. Choose another file with --output.",
        )
    if not out.parent.is_dir():
        raise PredictionError(
            "output-unwritable",
            f"The folder {output_path.parent} of the output does not exist. Create it, or "
            "choose another file with --output.",
        )
    if out.is_dir():
        raise PredictionError(
            "output-unwritable",
            f"The output {output_path} is a folder. Give a file name with --output.",
        )


def _write_csv_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    try:
        write_file(path, buffer.getvalue().encode("utf-8"), mode=0o640, replace=True)
    except OSError as err:
        raise PredictionError(
            "output-unwritable",
            f"The output {path} cannot be written ({err.strerror or err}). Check that this "
            "user may write to its folder, or choose another file with --output.",
        ) from err


def predict_file(
    release_dir: Path,
    input_path: Path,
    *,
    public_key_pem: str,
    output_path: Path | None = None,
    data: DataSection | None = None,
    device: str = "cpu",
    tokenize: Tokenize | None = None,
) -> PredictionReport:
    """Verify the release, predict every row of ``input_path`` and write the CSV.

    ``output_path`` defaults to :func:`default_output_path`; it is never the input nor inside
    the release. ``data``: the node's ``[data]`` section (column declarations and renames, text
    column). Raises ReleaseError, ConnectorError or PredictionError; writes nothing then.
    """
    output = output_path if output_path is not None else default_output_path(input_path)
    _check_output(output, input_path, release_dir)
    released = load_release_model(release_dir, public_key_pem=public_key_pem, device=device)
    rows: PredictionInputs = load_prediction_inputs(
        input_path, released.task, data=data, tokenize=tokenize
    )
    probabilities = predict_probabilities(released.model, rows.inputs)
    labels = task_labels(released.task)
    predicted = probabilities.argmax(axis=1)
    header = [rows.id_column, "prediction", *(f"p_{label}" for label in labels)]
    lines = [
        [row_id, labels[int(k)], *(f"{p:.6f}" for p in probs)]
        for row_id, k, probs in zip(rows.ids, predicted, probabilities, strict=True)
    ]
    _write_csv_atomic(output, header, lines)
    counts = {label: int((predicted == k).sum()) for k, label in enumerate(labels)}
    federation = released.manifest.get("federation")
    version = released.manifest.get("version")
    release_id = released.manifest.get("release_id")
    return PredictionReport(
        release_id=release_id if isinstance(release_id, str) else None,
        version=version if isinstance(version, int) else None,
        federation=(str(federation.get("name")) if isinstance(federation, Mapping) else None),
        task=released.spec.task,
        model=released.spec.model.name,
        model_digest=str(released.manifest["model_digest"]),
        rows=len(rows),
        labels=labels,
        counts=counts,
        output_path=output,
    )
