"""Image connector: a folder with one subfolder per class, prepared as the task's ImageSpec says.

Each subfolder is named as one of the task's labels (or mapped onto one in node.toml
``[data.label_values]``); every file inside it (hidden files aside) must decode as an image.
Images are converted to the task's channels, resized to ``size`` x ``size``, scaled to [0, 1]
and normalised as ``(x - mean) / std``: float32 ``(n, channels, size, size)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from client_node.connectors.common import LabelMapper, split_examples
from client_node.connectors.errors import ConnectorError
from client_node.settings import DataSection
from lepton_fl.datasets.examples import ImageSpec, LocalSplit
from lepton_fl.datasets.registry import TaskInfo

__all__ = ["load_image_folder", "prepare_image"]


def load_image_folder(data: DataSection, task: TaskInfo) -> LocalSplit:
    """Read, check and prepare every image under the node's folder; split (seeded, stratified)."""
    spec = task.image
    if spec is None or task.modality != "image":
        raise ConnectorError(
            f"node.toml [data] reads an image folder, but task {task.name!r} is "
            f"{task.modality} data. Choose an image task or another source.",
            code="schema_mismatch",
        )
    root = data.path
    if root is None:
        raise ConnectorError("node.toml [data] needs path for an image folder.", code="empty")
    if not root.exists():
        raise ConnectorError(
            f"The image folder {root} does not exist. Fix [data].path in node.toml (relative "
            "paths are relative to node.toml) or put the folder there.",
            code="missing_file",
            path=root,
        )
    if not root.is_dir():
        raise ConnectorError(
            f"{root} is a file, not a folder. Point [data].path at a folder with one "
            "subfolder per class.",
            code="unreadable",
            path=root,
        )
    mapper = LabelMapper(task, data.label_values)
    try:
        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise ConnectorError(
            f"The image folder {root} cannot be read ({err.strerror or err}). Check that the "
            "node's user may read it.",
            code="unreadable",
            path=root,
        ) from err
    if not classes:
        raise ConnectorError(
            f"The image folder {root} has no class subfolders. Make one subfolder per class, "
            f"named as the task's labels {list(mapper.labels)}, and put the images in them.",
            code="empty",
            path=root,
        )
    pixels: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    for folder in classes:
        label = mapper(folder.name)
        if label is None:
            raise ConnectorError(
                f"The image folder {root} has a subfolder {folder.name!r}, which is not one of "
                f"the task's labels {list(mapper.labels)}. Rename it, or map it onto a label "
                "in node.toml [data.label_values].",
                code="unknown_label",
                path=folder,
            )
        for file in sorted(_files(folder)):
            pixels.append(prepare_image(file, spec))
            labels.append(label)
    if not pixels:
        raise ConnectorError(
            f"The image folder {root} has class subfolders but no images in them. Put the "
            "images into the subfolder of their class.",
            code="empty",
            path=root,
        )
    return split_examples(
        name=data.partition,
        modality="image",
        inputs=(np.stack(pixels).astype(np.float32),),
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=task.num_classes,
        seed=data.seed,
        test_fraction=data.test_fraction,
        path=root,
    )


def _files(folder: Path) -> list[Path]:
    try:
        return [
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
    except OSError as err:
        raise ConnectorError(
            f"The class folder {folder} cannot be read ({err.strerror or err}). Check that the "
            "node's user may read it.",
            code="unreadable",
            path=folder,
        ) from err


def prepare_image(path: Path, spec: ImageSpec) -> npt.NDArray[np.float32]:
    """One image file as float32 ``(channels, size, size)``, prepared as ``spec`` says."""
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert("L" if spec.channels == 1 else "RGB")
            resized = converted.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ConnectorError(
            f"The image {path} cannot be decoded ({type(err).__name__}: {err}). Replace it with "
            "a valid image file (PNG, JPEG, TIFF, ...) or remove it.",
            code="bad_image",
            path=path,
        ) from err
    array = np.asarray(resized, dtype=np.float32) / 255.0
    array = array[np.newaxis, :, :] if spec.channels == 1 else np.transpose(array, (2, 0, 1))
    return ((array - spec.mean) / spec.std).astype(np.float32)
