"""Solar-cell defects at four plants: ELPV electroluminescence images, split by production line.

Source: package ``elpv-dataset`` (Buerhop-Lutz et al. / Deitsch et al., "A Benchmark for Visual
Identification of Defective Solar Cells in Electroluminescence Imagery"): 2624 grayscale
300x300 cell images, each with a cell type (``mono``: 1074, ``poly``: 1550, monocrystalline and
polycrystalline modules, i.e. two production lines) and an expert's defect probability (0, 1/3,
2/3 or 1). The images are licensed **CC BY-NC-SA 4.0 (non-commercial)**, so the package lives in
the optional ``sectors`` extra and is imported only when this task is loaded.

Label (2 classes, :data:`ELPV_LABELS`): ``defective`` (1) when the defect probability is
>= 0.5 (2/3 or 1: 821 cells), ``functional`` (0) otherwise (0 or 1/3: 1803 cells); the usual
binarisation of this benchmark.

Plants: the natural split by production line
(:func:`~lepton_fl.datasets.partition.natural_partition` on the cell type), then each line into
two plants by :func:`~lepton_fl.datasets.partition.dirichlet_partition` on the label (alpha
:data:`ELPV_ALPHA`, a fixed seed per line, each plant at least 20% of its line and 10 cells of
each class): ``mono-a``, ``mono-b``, ``poly-a``, ``poly-b``. Four plants, because secure
aggregation needs at least three participants. The split does not depend on the loader's seed,
which draws each plant's own stratified train/test split.

Images (:data:`ELPV_IMAGE`): decoded as the package does (PIL), converted to grayscale, resized
to 64x64 with area averaging (``Image.BOX``), scaled to [0, 1] and normalised as
``(x - 0.5) / 0.5``; inputs ``(pixels,)`` float32 ``(n, 1, 64, 64)``. Only the requested plant's
images are decoded (the labels file is read for the split); decoded plants are kept in memory
for the rest of the process.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.examples import Examples, ImageSpec, LocalSplit
from lepton_fl.datasets.partition import dirichlet_partition, natural_partition
from lepton_fl.datasets.tabular import DatasetError, stratified_split

__all__ = [
    "ELPV_ALPHA",
    "ELPV_IMAGE",
    "ELPV_LABELS",
    "ELPV_SITES",
    "elpv_partition_indices",
    "load_elpv",
    "prepare_images",
    "read_elpv_labels",
]

ELPV_SITES: tuple[str, ...] = ("mono-a", "mono-b", "poly-a", "poly-b")
"""The four plants, as partition names (production line, then plant)."""
ELPV_LABELS: tuple[str, ...] = ("functional", "defective")
"""Class names; index = label."""
ELPV_IMAGE = ImageSpec(channels=1, size=64)
"""How every plant prepares its images."""
ELPV_ALPHA = 1.0
"""Dirichlet concentration of the split of each line into two plants."""
ELPV_PARTITION_SEED = 0
"""Seed of the plant split (line ``k`` uses ``ELPV_PARTITION_SEED + k``)."""
DEFECT_THRESHOLD = 0.5
"""A cell is ``defective`` when its defect probability is at least this."""

_LINES = ("mono", "poly")
_INSTALL = "pip install 'lepton-fl[sectors]'  (or: pip install 'elpv-dataset>=1.0,<1.1')"


def _labels_file() -> Path:
    try:
        import elpv_dataset.utils
    except ImportError as exc:
        raise DatasetError(
            "the solar_defects demo data needs the package 'elpv-dataset' (images under "
            f"CC BY-NC-SA 4.0, non-commercial), which is not installed: {_INSTALL}",
            code="missing_dependency",
        ) from exc
    path = Path(elpv_dataset.utils.__file__).parent / "data" / "labels.csv"
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing; reinstall the package: pip install --force-reinstall "
            "'elpv-dataset>=1.0,<1.1'",
            code="bad_data",
        )
    return path


@functools.lru_cache(maxsize=1)
def read_elpv_labels() -> tuple[tuple[Path, ...], npt.NDArray[np.int64], tuple[str, ...]]:
    """Every cell's image path, binary label and production line (``mono``/``poly``).

    Reads the package's ``labels.csv`` exactly as ``elpv_dataset.utils.load_dataset`` does,
    without decoding the images.
    """
    path = _labels_file()
    try:
        data = np.genfromtxt(
            path, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"]
        )
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot read {path}: {exc}; reinstall: pip install --force-reinstall elpv-dataset",
            code="bad_data",
        ) from exc
    names = np.char.decode(data["path"])
    probability = np.asarray(data["probability"], dtype=np.float64)
    lines = tuple(str(t) for t in np.char.decode(data["type"]))
    bad = [i for i, t in enumerate(lines) if t not in _LINES]
    if bad or not np.isfinite(probability).all() or ((probability < 0) | (probability > 1)).any():
        row = bad[0] + 1 if bad else int(np.flatnonzero(~(probability >= 0))[0]) + 1
        raise DatasetError(
            f"{path}, row {row}: expected a cell type in {list(_LINES)} and a defect "
            "probability in [0, 1]; reinstall: pip install --force-reinstall elpv-dataset",
            code="bad_data",
        )
    labels = (probability >= DEFECT_THRESHOLD).astype(np.int64)
    labels.setflags(write=False)
    return tuple(path.parent / str(n) for n in names), labels, lines


@functools.lru_cache(maxsize=1)
def _plant_indices() -> tuple[npt.NDArray[np.int64], ...]:
    _, labels, lines = read_elpv_labels()
    by_line = natural_partition(lines)
    parts: list[npt.NDArray[np.int64]] = []
    for k, line in enumerate(_LINES):
        rows = by_line[line]
        halves = dirichlet_partition(
            labels[rows],
            num_partitions=2,
            alpha=ELPV_ALPHA,
            seed=ELPV_PARTITION_SEED + k,
            min_partition_size=len(rows) // 5,
            min_class_size=10,
        )
        parts.extend(rows[h] for h in halves)
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def elpv_partition_indices() -> Mapping[str, npt.NDArray[np.int64]]:
    """Indices (into the 2624 cells of ``labels.csv``) of every plant, sorted, disjoint."""
    return dict(zip(ELPV_SITES, _plant_indices(), strict=True))


def prepare_images(paths: tuple[Path, ...], spec: ImageSpec) -> npt.NDArray[np.float32]:
    """Decode, convert, resize (area) and normalise images as ``spec`` says: ``(n, c, s, s)``."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if spec.channels == 1 else "RGB"
    out = np.empty((len(paths), spec.channels, spec.size, spec.size), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                small = image.convert(mode).resize((spec.size, spec.size), Image.Resampling.BOX)
                pixels = np.asarray(small, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(
                f"cannot decode image {path}: {exc}; reinstall the package that ships it",
                code="bad_data",
            ) from exc
        out[i] = pixels.reshape(spec.size, spec.size, spec.channels).transpose(2, 0, 1)
    return (out - np.float32(spec.mean)) / np.float32(spec.std)


@functools.lru_cache(maxsize=len(ELPV_SITES))
def _plant_pixels(plant: str) -> npt.NDArray[np.float32]:
    paths, _, _ = read_elpv_labels()
    rows = elpv_partition_indices()[plant]
    pixels = prepare_images(tuple(paths[i] for i in rows), ELPV_IMAGE)
    pixels.setflags(write=False)
    return pixels


def load_elpv(plant: str, *, seed: int, test_fraction: float) -> LocalSplit:
    """One plant's cells as an image :class:`LocalSplit` (seeded, stratified train/test)."""
    if plant not in ELPV_SITES:
        raise DatasetError(
            f"unknown solar_defects partition {plant!r}; choose one of {list(ELPV_SITES)}",
            code="unknown_partition",
        )
    _, labels, _ = read_elpv_labels()
    y = labels[elpv_partition_indices()[plant]]
    pixels = _plant_pixels(plant)
    train, test = stratified_split(y, test_fraction=test_fraction, seed=seed)
    return LocalSplit(
        name=plant,
        modality="image",
        train=Examples(inputs=(np.ascontiguousarray(pixels[train]),), labels=y[train]),
        test=Examples(inputs=(np.ascontiguousarray(pixels[test]),), labels=y[test]),
        num_classes=len(ELPV_LABELS),
    )
