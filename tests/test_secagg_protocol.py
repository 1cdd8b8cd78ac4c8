"""SecAgg+ end to end, one-round sessions (``session_rounds=1``, i.e. fresh keys every round):
exact sums with dropouts at every stage, over a wide range of parameters (real crypto).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from test_secagg_session import check_exact, expected_session

from lepton_fl.secagg import SETUP, ErrorCode, SecAggConfig, Stage, resolve_round_params
from lepton_fl.secagg.config import masking_graph
from lepton_fl.secagg.simulate import DropPoint, run_local_session

SEED = bytes(range(32))
POINTS: list[DropPoint] = [
    (SETUP, Stage.ADVERTISE_KEYS),
    (SETUP, Stage.SHARE_KEYS),
    (1, Stage.MASKED_INPUT),
    (1, Stage.UNMASK),
]


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, NDArray[Any]], dict[int, DropPoint]]:
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
        neighbours=neighbours,
        modulus_bits=bits,
        clipping_range=clip,
        threshold=threshold,
        session_rounds=1,
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
    drops = {i: draw(st.sampled_from(POINTS)) for i in dropped}
    return config, updates, drops


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_aggregate_is_exact_sum_of_survivors_under_dropouts(
    case: tuple[SecAggConfig, dict[int, NDArray[Any]], dict[int, DropPoint]],
) -> None:
    config, updates, drops = case
    state = run_local_session(config, [updates], drop_at=drops, graph_seed=SEED)
    survivors, expected = expected_session(state.server.params, 1, drops)
    event(f"outcome: {expected or 'aggregate'}")
    for point in set(drops.values()):
        event(f"dropout at {point[1].value}")
    # Only a node left with fewer than t share holders refuses (itself) to go on.
    assert all(e.code is ErrorCode.TOO_FEW_HOLDERS for e in state.node_errors.values())
    if expected is not None:
        assert state.error is not None
        assert state.error.code is expected, state.error
        assert state.results == []
        return
    assert state.error is None, state.error
    (result,) = state.results
    assert [set(result.survivors)] == survivors
    sent_input = [
        i for i in updates if drops.get(i) not in POINTS[:3] and i not in state.node_errors
    ]
    assert set(result.survivors) <= set(sent_input)
    check_exact(result, updates)


@pytest.mark.parametrize("point", POINTS, ids=[p[1].value for p in POINTS])
def test_one_dropout_at_each_stage_still_sums_exactly(point: DropPoint) -> None:
    rng = np.random.default_rng(7)
    updates = {i: rng.normal(0, 0.6, 50).astype(np.float32) for i in (3, 9, 27, 81, 243)}
    config = SecAggConfig(clipping_range=1.0, session_rounds=1)
    state = run_local_session(config, [updates], drop_at={27: point})
    assert state.error is None
    (result,) = state.results
    late = point[1] is Stage.UNMASK
    assert result.survivors == ((3, 9, 27, 81, 243) if late else (3, 9, 81, 243))
    check_exact(result, updates)
    assert result.clipped_total > 0


def test_secagg_plus_sparse_graph_with_dropouts() -> None:
    rng = np.random.default_rng(11)
    ids = list(range(100, 112))
    updates = {i: rng.uniform(-2, 2, 30) for i in ids}
    config = SecAggConfig(neighbours=6, clipping_range=1.5, session_rounds=1)
    # With k = 6 and t = 4, any three dropouts leave every node enough holders.
    drops: dict[int, DropPoint] = {
        101: (SETUP, Stage.SHARE_KEYS),
        105: (1, Stage.MASKED_INPUT),
        109: (1, Stage.UNMASK),
    }
    state = run_local_session(config, [updates], drop_at=drops, graph_seed=SEED)
    assert state.error is None
    (result,) = state.results
    params = result.params
    assert params.neighbours == 6
    assert params.threshold == 4
    assert all(len(v) == 6 for v in masking_graph(params).values())
    assert 101 not in result.survivors
    assert 105 not in result.survivors
    check_exact(result, updates)


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
