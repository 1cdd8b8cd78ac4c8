"""Model inputs of any modality: a tuple of arrays, one per positional argument of the model.

Tabular features and images are float (float32 on the device), token ids and masks integer
(int64). Only float inputs can hold NaN or infinity, so only they are checked for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["as_tensor", "model_inputs"]


def as_tensor(array: npt.NDArray[np.generic]) -> torch.Tensor:
    """Float inputs as float32, integer inputs (token ids, masks) as int64."""
    if np.issubdtype(array.dtype, np.floating):
        return torch.as_tensor(array, dtype=torch.float32)
    return torch.as_tensor(array, dtype=torch.int64)


def model_inputs(
    inputs: Sequence[npt.NDArray[np.generic]] | npt.NDArray[np.generic],
    labels: npt.NDArray[np.generic],
) -> tuple[tuple[npt.NDArray[np.generic], ...], npt.NDArray[np.generic]]:
    """Check a model's inputs (one array per positional argument; a single array means one
    argument) against its labels: same number of examples, real numbers, no NaN or infinity
    in float inputs. Returns ``(inputs, labels)`` as arrays."""
    arrays = (
        (np.asarray(inputs),)
        if isinstance(inputs, np.ndarray)
        else tuple(np.asarray(a) for a in inputs)
    )
    y_arr = np.asarray(labels)
    if not arrays:
        raise ValueError("the model needs at least one input array")
    if y_arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional (n,), got shape {y_arr.shape}")
    for i, array in enumerate(arrays):
        if array.ndim < 2 or len(array) != len(y_arr):
            raise ValueError(
                f"input {i} has shape {array.shape}: it must be (n, ...) with n = "
                f"{len(y_arr)}, the number of labels"
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(f"input {i} must hold real numbers, got dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"input {i} contains NaN or infinite values")
    return arrays, y_arr
