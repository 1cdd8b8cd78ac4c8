"""SecAgg+ end to end: exact sums with dropouts at every stage (real crypto, no mocks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from lepton_fl.secagg import ErrorCode, SecAggConfig, SecAggError, Stage, resolve_round_params
from lepton_fl.secagg.config import RoundParams, is_connected, masking_graph
from lepton_fl.secagg.encoding import encode, reduce
from lepton_fl.secagg.simulate import run_local_round

SEED = bytes(range(32))


def expected_outcome(params: RoundParams, drops: dict[int, Stage]) -> ErrorCode | None:
    """Which error (if any) an honest server and honest nodes must end a round with."""
    graph = masking_graph(params)
    t, need = params.threshold, params.min_survivors
    u1 = {i for i in params.participants if drops.get(i) is not Stage.ADVERTISE_KEYS}
    if len(u1) < need:
        return ErrorCode.TOO_FEW_SURVIVORS
    u2 = {i for i in u1 if drops.get(i) is not Stage.SHARE_KEYS and len((graph[i] & u1) | {i}) >= t}
    if len(u2) < need:
        return ErrorCode.TOO_FEW_SURVIVORS
    u3 = {i for i in u2 if drops.get(i) is not Stage.MASKED_INPUT and len(graph[i] & u2) + 1 >= t}
    if len(u3) < need:
        return ErrorCode.TOO_FEW_SURVIVORS
    if not is_connected(u3, graph):
        return ErrorCode.DISCONNECTED_SURVIVORS
    answering = {i for i in u3 if drops.get(i) is not Stage.UNMASK}
    if any(len(answering & ((graph[u] & u2) | {u})) < t for u in u3):
        return ErrorCode.RECONSTRUCTION_FAILED
    needed = {d for u in u3 for d in graph[u] & u2} - u3
    if any(len(answering & graph[d]) < t for d in needed):
        return ErrorCode.RECONSTRUCTION_FAILED
    return None


def check_exact(result: Any, updates: dict[int, NDArray[Any]], params: RoundParams) -> None:
    """The unmasked ring sum equals the plaintext sum of the survivors' encodings."""
    bits = params.modulus_bits
    expect = None
    clipped = 0
    for node in result.survivors:
        words, stats = encode(
            updates[node],
            clipping_range=params.clipping_range,
            levels=params.levels,
            modulus_bits=bits,
        )
        clipped += stats.clipped
        expect = words.copy() if expect is None else expect + words
    assert expect is not None
    reduce(expect, modulus_bits=bits)
    np.testing.assert_array_equal(result.encoded_sum, expect[:-1])
    assert result.clipped_total == clipped
    c = params.clipping_range
    float_sum = sum(np.clip(updates[n].astype(np.float64), -c, c) for n in result.survivors)
    assert np.all(np.abs(result.values - float_sum) <= result.error_bound)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, NDArray[Any]], dict[int, Stage]]:
    n = draw(st.integers(3, 12))
    ids = draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    neighbours = draw(st.none() | st.integers(2, n - 1))
    bits = draw(st.sampled_from([16, 24, 32, 48, 64]))
    clip = draw(st.sampled_from([0.01, 1.0, 1000.0]))
    base = SecAggConfig(neighbours=neighbours, modulus_bits=bits, clipping_range=clip)
    holders = resolve_round_params(
        base, participants=ids, vector_length=1, graph_seed=SEED
    ).holders_per_node
    threshold = draw(st.none() | st.integers(holders // 2 + 1, holders))
    config = SecAggConfig(
        neighbours=neighbours, modulus_bits=bits, clipping_range=clip, threshold=threshold
    )
    length = draw(st.integers(1, 6))
    width = draw(st.sampled_from([32, 64]))
    bound = float(np.float32(1.5 * clip))
    values = st.floats(-bound, bound, width=width) | st.sampled_from(
        [np.inf, -np.inf, clip, -clip, 0.0]
    )
    dtype = np.float32 if width == 32 else np.float64
    updates = {
        i: np.array(draw(st.lists(values, min_size=length, max_size=length)), dtype=dtype)
        for i in ids
    }
    dropped = draw(st.lists(st.sampled_from(ids), unique=True, max_size=n // 3 + 1))
    drops = {i: draw(st.sampled_from(list(Stage))) for i in dropped}
    return config, updates, drops


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_aggregate_is_exact_sum_of_survivors_under_dropouts(
    case: tuple[SecAggConfig, dict[int, NDArray[Any]], dict[int, Stage]],
) -> None:
    config, updates, drops = case
    length = next(iter(updates.values())).size
    params = resolve_round_params(
        config, participants=updates, vector_length=length, graph_seed=SEED
    )
    expected = expected_outcome(params, drops)
    event(f"outcome: {expected or 'aggregate'}")
    for stage in set(drops.values()):
        event(f"dropout at {stage.value}")
    if expected is not None:
        with pytest.raises(SecAggError) as err:
            run_local_round(config, updates, drop_at=drops, graph_seed=SEED)
        assert err.value.code is expected, err.value
        return
    result, _ = run_local_round(config, updates, drop_at=drops, graph_seed=SEED)
    sent_input = [
        i
        for i in params.participants
        if drops.get(i) not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT)
    ]
    assert set(result.survivors) <= set(sent_input)
    check_exact(result, updates, params)


@pytest.mark.parametrize("stage", list(Stage))
def test_one_dropout_at_each_stage_still_sums_exactly(stage: Stage) -> None:
    rng = np.random.default_rng(7)
    updates = {i: rng.normal(0, 0.6, 50).astype(np.float32) for i in (3, 9, 27, 81, 243)}
    config = SecAggConfig(clipping_range=1.0)
    result, _ = run_local_round(config, updates, drop_at={27: stage})
    expected_survivors = (3, 9, 81, 243) if stage is not Stage.UNMASK else (3, 9, 27, 81, 243)
    assert result.survivors == expected_survivors
    check_exact(result, updates, result.params)
    assert result.clipped_total > 0


def test_secagg_plus_sparse_graph_with_dropouts() -> None:
    rng = np.random.default_rng(11)
    ids = list(range(100, 112))
    updates = {i: rng.uniform(-2, 2, 30) for i in ids}
    config = SecAggConfig(neighbours=6, clipping_range=1.5)
    # With k = 6 and t = 4, any three dropouts leave every node enough holders.
    drops = {101: Stage.SHARE_KEYS, 105: Stage.MASKED_INPUT, 109: Stage.UNMASK}
    result, _ = run_local_round(config, updates, drop_at=drops, graph_seed=SEED)
    params = result.params
    assert params.neighbours == 6
    assert params.threshold == 4
    assert all(len(v) == 6 for v in masking_graph(params).values())
    assert 101 not in result.survivors
    assert 105 not in result.survivors
    check_exact(result, updates, params)


def test_default_parameters_are_documented_values() -> None:
    seed = SEED
    p = resolve_round_params(
        SecAggConfig(), participants=range(10), vector_length=5, graph_seed=seed
    )
    assert (p.neighbours, p.threshold, p.levels) == (9, 6, (2**31 - 1) // 10)
    p = resolve_round_params(
        SecAggConfig(), participants=range(200), vector_length=5, graph_seed=seed
    )
    assert (p.neighbours, p.threshold) == (154, 78)  # k = 2 * ceil(10 * log2 200); t > 155 / 2
