"""Fixed-point encoding of float updates into the ring Z_(2**modulus_bits) and back.

A value x is clipped to [-c, c] (clipped values are counted, never wrapped) and encoded as
the two's-complement ring element of ``q = round(x * L / c)``, |q| <= L.  With
``n * L < 2**(modulus_bits - 1)`` the sum of any n encodings never wraps, so the ring sum
decodes to the exact integer sum ``S``, and ``S * c / L`` differs from the sum of the m
clipped inputs by at most ``m * (c / (2 L) + c * 2**-50)`` per coordinate (rounding to the
nearest level, plus float64 arithmetic).

The encoded vector carries one extra, unscaled element: the number of clipped values, so
the server learns only the total number of clipped values of the round, not a node's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg.crypto import ring_dtype
from lepton_fl.secagg.errors import ErrorCode, SecAggError


@dataclass(frozen=True, slots=True)
class EncodingStats:
    """What encoding did to one node's update."""

    total: int
    clipped: int
    max_abs: float


def ring_mask(modulus_bits: int) -> int:
    """The bit mask that reduces a word modulo 2**modulus_bits."""
    return (1 << modulus_bits) - 1


def reduce(vec: NDArray[Any], *, modulus_bits: int) -> NDArray[Any]:
    """Reduce a ring-word vector in place modulo 2**modulus_bits and return it."""
    if modulus_bits not in (32, 64):
        vec &= vec.dtype.type(ring_mask(modulus_bits))
    return vec


def encode(
    update: NDArray[Any], *, clipping_range: float, levels: int, modulus_bits: int
) -> tuple[NDArray[Any], EncodingStats]:
    """Encode a 1-D float update (plus its clip count) as ring words."""
    x = np.asarray(update)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise SecAggError(ErrorCode.MALFORMED, "The update must be a 1-D floating-point vector.")
    x = x.astype(np.float64, copy=False)
    c = float(clipping_range)
    magnitude = np.abs(x)
    max_abs = float(magnitude.max()) if x.size else 0.0
    if np.isnan(max_abs):  # max propagates NaN: one pass instead of isnan + any
        raise SecAggError(
            ErrorCode.NON_FINITE_INPUT, "The update contains NaN values, which cannot be encoded."
        )
    clipped = int(np.count_nonzero(magnitude > c))
    scaled = np.clip(x, -c, c, out=magnitude)  # reuse the buffer
    scaled *= levels / c
    q = np.rint(scaled, out=scaled).astype(np.int64)
    if levels >= 2**50:  # float64 rounding could push |q| past L: clamp
        np.clip(q, -levels, levels, out=q)
    words = np.empty(x.size + 1, dtype=ring_dtype(modulus_bits))
    words[:-1] = q.view(np.uint64).astype(words.dtype, copy=False)  # two's complement
    words[-1] = clipped
    reduce(words, modulus_bits=modulus_bits)
    return words, EncodingStats(total=int(x.size), clipped=clipped, max_abs=max_abs)


def to_signed(words: NDArray[Any], *, modulus_bits: int) -> NDArray[np.int64]:
    """Interpret ring words as integers in [-2**(k-1), 2**(k-1))."""
    if modulus_bits == 64:
        signed: NDArray[np.int64] = words.astype(np.uint64).view(np.int64)
        return signed
    w: NDArray[np.int64] = (words & words.dtype.type(ring_mask(modulus_bits))).astype(np.int64)
    half = 1 << (modulus_bits - 1)
    w[w >= half] -= 1 << modulus_bits
    return w


def decode_sum(
    encoded_sum: NDArray[Any], *, clipping_range: float, levels: int, modulus_bits: int
) -> NDArray[np.float64]:
    """Decode the ring sum of data elements (without the count element) to floats."""
    signed = to_signed(encoded_sum, modulus_bits=modulus_bits)
    return signed.astype(np.float64) * (float(clipping_range) / levels)


def error_bound(*, clipping_range: float, levels: int, count: int) -> float:
    """Per-coordinate bound on |decoded sum - sum of the clipped inputs| for ``count`` inputs."""
    c = float(clipping_range)
    return count * (c / (2 * levels) + c * 2.0**-50)


def flatten(arrays: Sequence[NDArray[Any]]) -> tuple[NDArray[np.float64], list[tuple[int, ...]]]:
    """Concatenate arrays into one float64 vector, with the shapes to undo it."""
    shapes = [tuple(int(d) for d in a.shape) for a in arrays]
    if not arrays:
        return np.zeros(0, np.float64), shapes
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]), shapes


def unflatten(vec: NDArray[Any], shapes: Sequence[tuple[int, ...]]) -> list[NDArray[Any]]:
    """Split a vector made by :func:`flatten` back into arrays of ``shapes``."""
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    if sum(sizes) != vec.size:
        raise SecAggError(
            ErrorCode.MALFORMED,
            f"The vector has {vec.size} elements but the shapes need {sum(sizes)}.",
        )
    out: list[NDArray[Any]] = []
    pos = 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(vec[pos : pos + size].reshape(shape))
        pos += size
    return out
