"""Exchanged model weights as lists of float32 NumPy arrays, and their digest.

What travels between the nodes and the coordinator is exactly the model's *trainable
parameters* (``requires_grad``), in ``named_parameters`` order. Frozen parts (the lower layers of
a partly trained transformer) and buffers are rebuilt identically on every side from the
package and the seed, so they never travel. For models without frozen parts or buffers (the
tabular MLP, the CNN) this is the whole state_dict, in state_dict order.

Every function here accepts a plain module or the same module wrapped by Opacus
(``GradSampleModule`` prefixes state_dict keys with ``_module.``): they always work on the
unwrapped module, so a node and the coordinator see identical key order and shapes.
Opacus itself is not imported (it costs seconds), wrappers are recognised by their class.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["get_weights", "set_weights", "trainable_parameters", "unwrap_model", "weights_digest"]

_DIGEST_MAGIC = b"lepton-fl/weights/v1\x00"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside Opacus wrappers (``GradSampleModule`` and friends), else ``model``."""
    while type(model).__module__.startswith("opacus."):
        inner = getattr(model, "_module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The (unwrapped) model's trainable parameters by name, in ``named_parameters`` order:
    the tensors that are exchanged."""
    return {
        name: parameter
        for name, parameter in unwrap_model(model).named_parameters()
        if parameter.requires_grad
    }


def get_weights(model: nn.Module) -> list[npt.NDArray[np.float32]]:
    """Float32 copies of the (unwrapped) model's trainable parameters, in a fixed order."""
    return [
        np.array(t.detach().to("cpu", dtype=torch.float32).numpy(), dtype=np.float32, copy=True)
        for t in trainable_parameters(model).values()
    ]


def set_weights(model: nn.Module, weights: Sequence[npt.NDArray[np.generic]]) -> None:
    """Copy ``weights`` into the (unwrapped) model's trainable parameters in place, in the
    order of :func:`get_weights`.

    In place means optimizers and Opacus wrappers that hold the parameters keep working.
    Raises ``ValueError`` naming the tensor on a wrong count, a wrong shape or a non-finite value;
    nothing is modified unless every tensor checks out.
    """
    state = trainable_parameters(model)
    if len(weights) != len(state):
        raise ValueError(
            f"expected {len(state)} weight arrays ({', '.join(state)}), got {len(weights)}"
        )
    arrays: list[npt.NDArray[np.generic]] = []
    for (name, tensor), value in zip(state.items(), weights, strict=True):
        array = np.asarray(value)
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(
                f"weight {name!r}: expected shape {tuple(tensor.shape)}, got {tuple(array.shape)}"
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(f"weight {name!r}: expected a real numeric array, got {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(f"weight {name!r}: contains NaN or infinite values")
        arrays.append(array)
    with torch.no_grad():
        for tensor, array in zip(state.values(), arrays, strict=True):
            source = torch.from_numpy(np.ascontiguousarray(array))
            tensor.copy_(source.to(device=tensor.device, dtype=tensor.dtype))


def weights_digest(weights: Sequence[npt.NDArray[np.generic]]) -> str:
    """Hex SHA-256 over the count, and for each array its dtype, shape and little-endian bytes."""
    digest = hashlib.sha256(_DIGEST_MAGIC)
    digest.update(struct.pack("<Q", len(weights)))
    for value in weights:
        array = np.asarray(value)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        dtype = little.dtype.str.encode("ascii")
        digest.update(struct.pack("<Q", len(dtype)) + dtype)
        digest.update(struct.pack("<Q", array.ndim))
        digest.update(struct.pack(f"<{array.ndim}Q", *array.shape))
        payload = np.ascontiguousarray(little).tobytes()
        digest.update(struct.pack("<Q", len(payload)) + payload)
    return digest.hexdigest()
