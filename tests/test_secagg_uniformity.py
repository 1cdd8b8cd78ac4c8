"""The server's view of one node's masked vector is uniform and independent of the input.

Statistics: top bits of ring elements are bucketed and compared with the uniform law by a
chi-square goodness-of-fit test, and the views for two very different inputs are compared
with a chi-square test of homogeneity.  We reject at p < 1e-6: with a real CSPRNG a false
alarm is a one-in-a-million event per check, while a broken mask (e.g. a missing self
mask, a biased range like Flower's [0, range-2], a seed folded to 32 bits feeding a
non-cryptographic generator with visible structure) is far beyond this level with the
sample sizes used, as the sanity check on an unmasked vector shows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lepton_fl.secagg import MaskedInputReply, SecAggConfig, Stage
from lepton_fl.secagg.encoding import encode
from lepton_fl.secagg.simulate import run_local_session

ALPHA = 1e-6
Z_ALPHA = 4.753424  # upper 1e-6 quantile of the standard normal

try:
    from scipy import stats as _stats
except ImportError:  # pragma: no cover - scipy is optional
    _stats = None


def chi2_critical(df: int) -> float:
    """Upper ALPHA critical value of chi-square(df).

    scipy when available; otherwise the Wilson-Hilferty approximation, whose relative
    error is below 1% for df >= 15 (all df used here), and which we make conservative by
    adding 2% (a larger critical value only makes a false alarm rarer).
    """
    if _stats is not None:
        return float(_stats.chi2.isf(ALPHA, df))
    h = 2.0 / (9.0 * df)
    return 1.02 * df * (1.0 - h + Z_ALPHA * math.sqrt(h)) ** 3


def uniformity_statistic(counts: NDArray[Any]) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def homogeneity_statistic(a: NDArray[Any], b: NDArray[Any]) -> float:
    table = np.vstack([a, b]).astype(np.float64)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def top_bits(words: NDArray[Any], *, modulus_bits: int, bits: int) -> NDArray[Any]:
    values = words.astype(np.uint64) >> np.uint64(modulus_bits - bits)
    return np.bincount(values.astype(np.int64), minlength=1 << bits)


def masked_view(value: float, *, length: int, modulus_bits: int, round: int = 1) -> NDArray[Any]:
    """What the server receives from node 1 when its update is ``value`` everywhere."""
    config = SecAggConfig(clipping_range=1.0, modulus_bits=modulus_bits, session_rounds=1)
    rng = np.random.default_rng(round)
    updates = {
        1: np.full(length, value, dtype=np.float32),
        2: rng.uniform(-1, 1, length).astype(np.float32),
        3: rng.uniform(-1, 1, length).astype(np.float32),
    }
    state = run_local_session(config, [updates], session=round)
    assert state.error is None
    (reply,) = (r for r in state.replies if r.sender == 1 and r.binding.stage is Stage.MASKED_INPUT)
    assert isinstance(reply, MaskedInputReply)
    masked: NDArray[Any] = reply.masked
    return masked[:-1]


@pytest.mark.parametrize("modulus_bits", [32, 48])
def test_masked_vector_is_uniform_and_input_independent(modulus_bits: int) -> None:
    bits, length = 8, 100_000
    zeros = top_bits(
        masked_view(0.0, length=length, modulus_bits=modulus_bits),
        modulus_bits=modulus_bits,
        bits=bits,
    )
    ones = top_bits(
        masked_view(1.0, length=length, modulus_bits=modulus_bits, round=2),
        modulus_bits=modulus_bits,
        bits=bits,
    )
    df = (1 << bits) - 1
    assert uniformity_statistic(zeros) < chi2_critical(df)
    assert uniformity_statistic(ones) < chi2_critical(df)
    assert homogeneity_statistic(zeros, ones) < chi2_critical(df)


def test_the_test_detects_an_unmasked_vector() -> None:
    rng = np.random.default_rng(0)
    update = rng.normal(0, 0.3, 100_000)
    words, _ = encode(update, clipping_range=1.0, levels=(2**31 - 1) // 3, modulus_bits=32)
    counts = top_bits(words[:-1], modulus_bits=32, bits=8)
    assert uniformity_statistic(counts) > chi2_critical(255)


def test_one_coordinate_over_many_rounds_is_uniform_for_both_inputs() -> None:
    rounds, bits = 160, 4
    first = {
        value: top_bits(
            np.array(
                [masked_view(value, length=1, modulus_bits=32, round=r)[0] for r in range(rounds)]
            ),
            modulus_bits=32,
            bits=bits,
        )
        for value in (-1.0, 1.0)
    }
    df = (1 << bits) - 1
    assert uniformity_statistic(first[-1.0]) < chi2_critical(df)
    assert uniformity_statistic(first[1.0]) < chi2_critical(df)
    assert homogeneity_statistic(first[-1.0], first[1.0]) < chi2_critical(df)
