"""Building blocks of SecAgg+: Shamir sharing, fixed point, mask generator, graph, binding."""

from __future__ import annotations

import itertools
import secrets
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_fl.secagg import (
    SETUP,
    Binding,
    SecAggConfig,
    Stage,
    flatten,
    resolve_round_params,
    shamir,
    unflatten,
)
from lepton_fl.secagg.config import is_connected, masking_graph
from lepton_fl.secagg.crypto import expand_mask, open_sealed, seal
from lepton_fl.secagg.encoding import decode_sum, encode, error_bound, reduce
from lepton_fl.secagg.errors import ErrorCode, SecAggError


@settings(max_examples=30, deadline=None)
@given(
    secret=st.integers(0, 2**256 - 1),
    n=st.integers(2, 10),
    data=st.data(),
)
def test_shamir_any_threshold_subset_recovers(secret: int, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    points = list(range(1, n + 1))
    shares = shamir.split(secret, threshold=t, points=points)
    subset = data.draw(st.permutations(points))[:t]
    assert shamir.combine({x: shares[x] for x in subset}) == secret
    if t > 1:  # fewer than t shares interpolate a different (random) polynomial
        assert shamir.combine({x: shares[x] for x in subset[: t - 1]}) != secret or secret == 0


def test_shamir_bytes_roundtrip_and_validation() -> None:
    value = secrets.randbelow(shamir.PRIME)
    assert shamir.from_bytes(shamir.to_bytes(value)) == value
    with pytest.raises(ValueError, match="66 bytes"):
        shamir.from_bytes(b"\x00" * 65)
    with pytest.raises(ValueError, match="field element"):
        shamir.from_bytes(b"\xff" * 66)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(1, threshold=2, points=[1, 1, 2])


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_encoding_roundtrip_and_headroom(bits: int) -> None:
    n, c = 7, 0.25
    levels = (2 ** (bits - 1) - 1) // n
    rng = np.random.default_rng(bits)
    xs = [rng.uniform(-c, c, 200) for _ in range(n)] + [np.full(200, c), np.full(200, -c)]
    for group in (xs[:n], [xs[n]] * n, [xs[n + 1]] * n):  # random, all +c, all -c: no wrap
        words = [encode(x, clipping_range=c, levels=levels, modulus_bits=bits)[0] for x in group]
        total = reduce(np.sum(words, axis=0, dtype=words[0].dtype), modulus_bits=bits)
        decoded = decode_sum(total[:-1], clipping_range=c, levels=levels, modulus_bits=bits)
        bound = error_bound(clipping_range=c, levels=levels, count=n)
        assert np.all(np.abs(decoded - np.sum(group, axis=0)) <= bound)


def test_clipped_values_hit_the_extreme_levels() -> None:
    x = np.array([9.0, -9.0, 1.0])
    words, stats = encode(x, clipping_range=1.0, levels=100, modulus_bits=16)
    assert stats.clipped == 2
    assert stats.max_abs == 9.0
    assert list(words) == [100, 2**16 - 100, 100, 2]


def test_ring_too_small_is_an_error() -> None:
    with pytest.raises(SecAggError) as err:
        resolve_round_params(
            SecAggConfig(modulus_bits=8),
            participants=range(3),
            vector_length=1,
            graph_seed=bytes(32),
        )
    assert err.value.code is ErrorCode.RING_TOO_SMALL


def test_mask_generator_is_deterministic_and_seed_separated() -> None:
    seed = secrets.token_bytes(32)
    a = expand_mask(seed, length=1000, modulus_bits=32)
    assert np.array_equal(a, expand_mask(seed, length=1000, modulus_bits=32))
    assert not np.array_equal(a, expand_mask(secrets.token_bytes(32), length=1000, modulus_bits=32))
    assert np.array_equal(a[:10], expand_mask(seed, length=10, modulus_bits=32))
    wide = reduce(expand_mask(seed, length=1000, modulus_bits=48).copy(), modulus_bits=48)
    assert wide.dtype == np.uint64
    assert int(wide.max()) < 2**48


def test_aead_binds_associated_data() -> None:
    key = secrets.token_bytes(32)
    sealed = seal(key, b"share", aad=b"run|1|7->9")
    assert open_sealed(key, sealed, aad=b"run|1|7->9") == b"share"
    with pytest.raises(SecAggError) as err:
        open_sealed(key, sealed, aad=b"run|2|7->9")
    assert err.value.code is ErrorCode.SHARE_AUTH_FAILED


@pytest.mark.parametrize(("n", "k"), [(5, 2), (9, 4), (12, 6), (12, 11), (40, 10)])
def test_masking_graph_is_regular_symmetric_connected_and_public(n: int, k: int) -> None:
    seed = secrets.token_bytes(32)
    p = resolve_round_params(
        SecAggConfig(neighbours=k), participants=range(n), vector_length=1, graph_seed=seed
    )
    graph = masking_graph(p)
    assert all(len(v) == k and m not in v for m, v in graph.items())
    assert all(m in graph[v] for m, vs in graph.items() for v in vs)
    assert is_connected(range(n), graph)
    assert graph == masking_graph(p)
    if k < n - 1:  # another public seed gives another graph (5 tries: tiny graphs may repeat)
        others = [
            masking_graph(
                resolve_round_params(
                    SecAggConfig(neighbours=k),
                    participants=range(n),
                    vector_length=1,
                    graph_seed=secrets.token_bytes(32),
                )
            )
            for _ in range(5)
        ]
        assert any(other != graph for other in others)


def test_odd_degree_is_rounded_up_to_even() -> None:
    p = resolve_round_params(
        SecAggConfig(neighbours=3), participants=range(10), vector_length=1, graph_seed=bytes(32)
    )
    assert p.neighbours == 4


def test_binding_encoding_is_unambiguous() -> None:
    rounds: list[int | Literal["setup"]] = [SETUP, 1, 12, 2]
    encodings = {
        Binding(run, session, rnd, stage).to_bytes()
        for run, session, rnd, stage in itertools.product(
            ["a", "a1", "1"], [1, 12, 2], rounds, list(Stage)
        )
    }
    assert len(encodings) == 3 * 3 * 4 * 4


def test_flatten_roundtrip() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4)]
    vec, shapes = flatten(arrays)
    back = unflatten(vec, shapes)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(SecAggError):
        unflatten(vec[:-1], shapes)
