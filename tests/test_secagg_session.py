"""SecAgg+ sessions of several rounds: 2 setup waves per session, then 2 waves per round.

Exact sums under dropouts over several rounds (real crypto, no mocks), exclusion of dropped
nodes on both sides, binding, and uniformity of a later round's masked vector.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from test_secagg_uniformity import (
    chi2_critical,
    homogeneity_statistic,
    top_bits,
    uniformity_statistic,
)

from lepton_fl.secagg import (
    SETUP,
    AggregateResult,
    Binding,
    ErrorCode,
    MaskedInputReply,
    SecAggConfig,
    SecAggError,
    SecAggNode,
    SecAggServer,
    Stage,
    UnmaskReply,
    resolve_session_params,
    shamir,
)
from lepton_fl.secagg.config import RoundParams, is_connected, masking_graph
from lepton_fl.secagg.crypto import expand_mask, private_key_from_bytes
from lepton_fl.secagg.derive import int_to_secret, pair_seed, round_context, self_seed
from lepton_fl.secagg.encoding import encode, reduce
from lepton_fl.secagg.simulate import DropPoint, run_local_session

SEED = bytes(range(32))
A, B = Stage.MASKED_INPUT, Stage.UNMASK


def encoded_sum(
    params: RoundParams, updates: dict[int, NDArray[Any]], nodes: tuple[int, ...]
) -> NDArray[Any]:
    total = sum(
        encode(
            updates[i],
            clipping_range=params.clipping_range,
            levels=params.levels,
            modulus_bits=params.modulus_bits,
        )[0]
        for i in nodes
    )
    assert isinstance(total, np.ndarray)
    return reduce(total, modulus_bits=params.modulus_bits)


def check_exact(result: AggregateResult, updates: dict[int, NDArray[Any]]) -> None:
    """The unmasked ring sum equals the plaintext sum of the survivors' encodings."""
    expect = encoded_sum(result.params, updates, result.survivors)
    np.testing.assert_array_equal(result.encoded_sum, expect[:-1])
    assert result.clipped_total == int(expect[-1])
    c = result.params.clipping_range
    float_sum = sum(np.clip(updates[n].astype(np.float64), -c, c) for n in result.survivors)
    assert np.all(np.abs(result.values - float_sum) <= result.error_bound)


def expected_session(
    params: RoundParams, rounds: int, drops: dict[int, DropPoint]
) -> tuple[list[set[int]], ErrorCode | None]:
    """Each round's survivors, and the error (if any) that ends the session early."""
    graph = masking_graph(params)
    t, need = params.threshold, params.min_survivors

    def silent(i: int, when: int, stage: Stage) -> bool:
        point = drops.get(i)
        if point is None:
            return False
        at = 0 if point[0] == SETUP else int(point[0])
        order = list(Stage)
        return (when, order.index(stage)) >= (at, order.index(point[1]))

    u1 = {i for i in params.participants if not silent(i, 0, Stage.ADVERTISE_KEYS)}
    if len(u1) < need:
        return [], ErrorCode.TOO_FEW_SURVIVORS
    active = {
        i for i in u1 if not silent(i, 0, Stage.SHARE_KEYS) and len((graph[i] & u1) | {i}) >= t
    }
    if len(active) < need:
        return [], ErrorCode.TOO_FEW_SURVIVORS
    outcomes: list[set[int]] = []
    for r in range(1, rounds + 1):
        if len(active) < need:
            return outcomes, ErrorCode.TOO_FEW_PARTICIPANTS
        if not is_connected(active, graph):
            return outcomes, ErrorCode.DISCONNECTED_SURVIVORS
        if any(len(graph[i] & active) + 1 < t for i in active):
            return outcomes, ErrorCode.TOO_FEW_HOLDERS
        survivors = {i for i in active if not silent(i, r, A)}
        if len(survivors) < need:
            return outcomes, ErrorCode.TOO_FEW_SURVIVORS
        if not is_connected(survivors, graph):
            return outcomes, ErrorCode.DISCONNECTED_SURVIVORS
        answering = {i for i in survivors if not silent(i, r, B)}
        if any(len(answering & (graph[u] | {u})) < t for u in survivors):
            return outcomes, ErrorCode.RECONSTRUCTION_FAILED
        needed = {d for u in survivors for d in graph[u] & active} - survivors
        if any(len(answering & graph[d]) < t for d in needed):
            return outcomes, ErrorCode.RECONSTRUCTION_FAILED
        outcomes.append(survivors)
        active = survivors
    return outcomes, None


Case = tuple[SecAggConfig, list[dict[int, NDArray[Any]]], dict[int, DropPoint]]


@st.composite
def sessions(draw: st.DrawFn) -> Case:
    n = draw(st.integers(3, 10))
    ids = draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    rounds = draw(st.integers(1, 4))
    neighbours = draw(st.none() | st.integers(2, n - 1))
    bits = draw(st.sampled_from([16, 32, 64]))
    base = SecAggConfig(neighbours=neighbours, modulus_bits=bits, session_rounds=rounds)
    holders = resolve_session_params(
        base, participants=ids, vector_length=1, graph_seed=SEED
    ).params.holders_per_node
    threshold = draw(st.none() | st.integers(holders // 2 + 1, holders))
    config = dataclasses.replace(base, threshold=threshold)
    length = draw(st.integers(1, 4))
    values = st.floats(-1.5, 1.5, width=32)
    updates = [
        {
            i: np.array(draw(st.lists(values, min_size=length, max_size=length)), np.float32)
            for i in ids
        }
        for _ in range(rounds)
    ]
    points: list[DropPoint] = [
        (SETUP, Stage.ADVERTISE_KEYS),
        (SETUP, Stage.SHARE_KEYS),
    ]
    points += [(r, stage) for r in range(1, rounds + 1) for stage in (A, B)]
    dropped = draw(st.lists(st.sampled_from(ids), unique=True, max_size=n // 2 + 1))
    weights = st.sampled_from(points[2:]) | st.sampled_from(points)  # favour round dropouts
    drops = {i: draw(weights) for i in dropped}
    return config, updates, drops


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_every_round_is_the_exact_sum_of_its_survivors_and_dropped_nodes_never_return(
    case: Case,
) -> None:
    config, updates, drops = case
    state = run_local_session(config, updates, drop_at=drops, graph_seed=SEED)
    params = state.server.params
    survivors, error = expected_session(params, config.session_rounds, drops)
    event(f"rounds done: {len(survivors)}/{config.session_rounds}; error: {error}")
    for point in set(drops.values()):
        event(f"dropout at {point[0]}/{point[1].value}")
    # Only a node left with fewer than t share holders at setup refuses (itself) to go on.
    assert all(e.code is ErrorCode.TOO_FEW_HOLDERS for e in state.node_errors.values())
    assert [set(res.survivors) for res in state.results] == survivors
    if error is None:
        assert state.error is None
        assert state.server.done
    else:
        assert state.error is not None
        assert state.error.code is error, state.error
        assert state.server.failed
    gone: set[int] = set()
    previous: set[int] | None = None
    for res in state.results:
        check_exact(res, updates[res.round - 1])
        active = set(res.active)
        assert not active & gone  # a node dropped in an earlier round never returns
        if previous is not None:
            assert active <= previous
        gone |= set(res.dropped)
        assert gone <= set(res.excluded)
        previous = set(res.survivors)


# -- step-by-step sessions -------------------------------------------------------------------


class Driver:
    """A session driven wave by wave, so a test can interfere between waves."""

    def __init__(
        self,
        ids: tuple[int, ...] = (1, 2, 3, 4, 5),
        *,
        rounds: int = 3,
        run_id: str = "run-A",
        session: int = 1,
        length: int = 16,
    ) -> None:
        self.config = SecAggConfig(clipping_range=1.0, session_rounds=rounds)
        rng = np.random.default_rng(session)
        self.updates = {
            r: {i: rng.uniform(-1, 1, length).astype(np.float32) for i in ids}
            for r in range(1, rounds + 1)
        }
        self.server = SecAggServer(
            run_id=run_id,
            session=session,
            config=self.config,
            participants=ids,
            vector_length=length,
        )
        self.nodes = {
            i: SecAggNode(node_id=i, run_id=run_id, session=session, config=self.config)
            for i in ids
        }

    def send(self, replies: dict[int, Any]) -> None:
        for reply in replies.values():
            assert self.server.receive(reply) is None

    def setup(self) -> None:
        reqs = self.server.advertise_keys_requests()
        self.send({i: self.nodes[i].advertise_keys(q) for i, q in reqs.items()})
        share_reqs = self.server.share_keys_requests()
        self.send({i: self.nodes[i].share_keys(q) for i, q in share_reqs.items()})

    def masked(self, skip: tuple[int, ...] = ()) -> dict[int, MaskedInputReply]:
        self.masked_requests = self.server.masked_input_requests()
        r = self.server.round
        return {
            i: self.nodes[i].masked_input(q, self.updates[r][i])
            for i, q in self.masked_requests.items()
            if i not in skip
        }

    def unmask(self, skip: tuple[int, ...] = ()) -> dict[int, UnmaskReply]:
        self.unmask_requests = self.server.unmask_requests()
        return {
            i: self.nodes[i].unmask(q) for i, q in self.unmask_requests.items() if i not in skip
        }

    def round(self, drop_a: tuple[int, ...] = (), drop_b: tuple[int, ...] = ()) -> AggregateResult:
        self.send(self.masked(skip=drop_a))
        self.unmask_replies = self.unmask(skip=drop_b)
        self.send(self.unmask_replies)
        result = self.server.finalize()
        check_exact(result, self.updates[result.round])
        return result


def test_two_setup_waves_then_two_waves_per_round() -> None:
    d = Driver(rounds=3)
    d.setup()
    for r in (1, 2, 3):
        result = d.round()
        assert (result.round, result.survivors, result.dropped) == (r, (1, 2, 3, 4, 5), ())
    assert d.server.done
    with pytest.raises(SecAggError) as err:
        d.server.masked_input_requests()
    assert err.value.code is ErrorCode.BAD_STATE


def test_node_dropped_in_round_1_cannot_take_part_in_round_2_on_either_side() -> None:
    d = Driver()
    d.setup()
    d.send(d.masked(skip=(4,)))
    late = d.nodes[4].masked_input(d.masked_requests[4], d.updates[1][4])  # computed too late
    d.send(d.unmask())
    result = d.server.finalize()
    check_exact(result, d.updates[1])
    assert result.dropped == (4,)
    assert 4 in d.server.excluded
    # Server side: no round-2 request for node 4, and anything it sends is refused.
    requests = d.server.masked_input_requests()
    assert set(requests) == {1, 2, 3, 5}
    assert requests[1].active == (1, 2, 3, 5)
    assert requests[1].excluded == (4,)
    rejection = d.server.receive(late)
    assert rejection is not None
    assert rejection.code is ErrorCode.EXCLUDED
    forged = dataclasses.replace(late, binding=requests[1].binding)
    rejection = d.server.receive(forged)
    assert rejection is not None
    assert rejection.code is ErrorCode.EXCLUDED
    # Node side: node 4 refuses round 2 (it was declared dropped) ...
    with pytest.raises(SecAggError) as err:
        d.nodes[4].masked_input(dataclasses.replace(requests[1], recipient=4), d.updates[2][4])
    assert err.value.code is ErrorCode.EXCLUDED
    # ... and the others refuse to mask with it again.
    with pytest.raises(SecAggError) as err:
        d.nodes[1].masked_input(
            dataclasses.replace(requests[1], active=(1, 2, 3, 4, 5), excluded=()),
            d.updates[2][1],
        )
    assert err.value.code is ErrorCode.EXCLUDED
    assert d.nodes[1].failed


def test_a_node_that_missed_a_round_refuses_later_rounds() -> None:
    d = Driver()
    d.setup()
    d.round(drop_a=(5,))
    d.send(d.masked())
    request = dataclasses.replace(d.masked_requests[1], recipient=5, excluded=())
    node = d.nodes[5]
    with pytest.raises(SecAggError) as err:
        node.masked_input(request, d.updates[2][5])
    assert err.value.code is ErrorCode.EXCLUDED


def test_self_mask_of_a_node_whose_mask_key_was_reconstructed_is_never_revealed() -> None:
    d = Driver()
    d.setup()
    d.round(drop_a=(4,))
    assert 4 in d.unmask_requests[1].dropped
    assert 4 in d.unmask_replies[1].mask_key_shares
    d.send(d.masked())
    genuine = d.server.unmask_requests()
    assert 4 not in genuine[1].survivors
    forged = dataclasses.replace(genuine[1], survivors=(*genuine[1].survivors, 4))
    with pytest.raises(SecAggError) as err:
        d.nodes[1].unmask(forged)
    assert err.value.code is ErrorCode.UNMASK_BOTH
    # Within a round, both kinds of shares of one node are refused as well.
    with pytest.raises(SecAggError) as err:
        d.nodes[2].unmask(dataclasses.replace(genuine[2], dropped=(3,)))
    assert err.value.code is ErrorCode.UNMASK_BOTH


def test_server_never_asks_for_the_self_mask_of_a_node_with_a_revealed_key() -> None:
    d = Driver()
    d.setup()
    d.send(d.masked())
    d.server._keys_revealed.add(2)  # as if node 2's mask key had been reconstructed
    with pytest.raises(SecAggError) as err:
        d.server.unmask_requests()
    assert err.value.code is ErrorCode.UNMASK_BOTH
    assert d.server.failed


def test_key_reconstructed_in_round_2_does_not_unmask_round_1() -> None:
    """Node 5 survives round 1 (b^(1) revealed), drops in round 2 (its s^(2) revealed).

    With one mask key for the whole run, these two secrets would unmask node 5's round-1
    update.  Per-round mask keys make the attack yield noise; the same attack with the real
    round-1 key (positive control) recovers the update exactly.
    """
    length = 50_000
    d = Driver(length=length)
    true_key_1 = d.nodes[5]._mask_sks[1]  # captured for the positive control only
    d.setup()
    d.send(masked_1 := d.masked())
    d.send(unmask_1 := d.unmask())
    check_exact(d.server.finalize(), d.updates[1])
    d.round(drop_a=(5,))
    params = d.server.params
    unmask_2 = d.unmask_replies

    def rebuild(replies: dict[int, UnmaskReply], kind: str) -> bytes:
        shares = {
            params.share_index(h): shamir.from_bytes(
                (rep.self_mask_shares if kind == "b" else rep.mask_key_shares)[5]
            )
            for h, rep in replies.items()
        }
        secret = int_to_secret(shamir.combine(shares))
        assert secret is not None
        return secret

    b1 = rebuild(unmask_1, "b")
    s2 = private_key_from_bytes(rebuild(unmask_2, "s"))
    ctx = round_context("run-A", 1, 1)
    keys = d.server._keys
    bits = params.modulus_bits

    def attack(mask_key: Any) -> NDArray[Any]:
        y = masked_1[5].masked.copy()
        y -= expand_mask(self_seed(b1, context=ctx, node=5), length=length + 1, modulus_bits=bits)
        for j in (1, 2, 3, 4):
            seed = pair_seed(mask_key, keys[j].mask(1), context=ctx, a=5, b=j)
            y += expand_mask(seed, length=length + 1, modulus_bits=bits)  # 5 > j subtracted
        return y

    x5 = encoded_sum(params, d.updates[1], (5,))
    np.testing.assert_array_equal(attack(true_key_1), x5)
    guess = attack(s2)[:-1]
    df = (1 << 8) - 1
    assert uniformity_statistic(top_bits(guess, modulus_bits=bits, bits=8)) < chi2_critical(df)


@pytest.mark.parametrize("modulus_bits", [32, 48])
def test_round_2_masked_vector_is_uniform_and_input_independent(modulus_bits: int) -> None:
    """What the server sees from node 1 in round 2, after a dropout and reconstruction in
    round 1, for two very different inputs: uniform, and the same law for both."""
    length, bits = 100_000, 8
    config = SecAggConfig(clipping_range=1.0, modulus_bits=modulus_bits, session_rounds=2)
    views = []
    for value in (0.0, 1.0):
        rng = np.random.default_rng(int(value))
        rounds = [
            {i: rng.uniform(-1, 1, length).astype(np.float32) for i in (1, 2, 3, 4)}
            for _ in range(2)
        ]
        rounds[1][1] = np.full(length, value, dtype=np.float32)
        state = run_local_session(config, rounds, drop_at={4: (1, A)})
        assert state.error is None
        assert state.results[0].dropped == (4,)
        (reply,) = (
            r for r in state.replies if r.sender == 1 and r.binding == Binding("run", 1, 2, A)
        )
        assert isinstance(reply, MaskedInputReply)
        views.append(top_bits(reply.masked[:-1], modulus_bits=modulus_bits, bits=bits))
    df = (1 << bits) - 1
    assert uniformity_statistic(views[0]) < chi2_critical(df)
    assert uniformity_statistic(views[1]) < chi2_critical(df)
    assert homogeneity_statistic(views[0], views[1]) < chi2_critical(df)


# -- binding and replays ---------------------------------------------------------------------


def test_setup_and_round_bindings_are_distinct() -> None:
    encodings = {
        Binding("r", 1, SETUP, Stage.SHARE_KEYS).to_bytes(),
        Binding("r", 1, 0, Stage.SHARE_KEYS).to_bytes(),
        Binding("r", 2, SETUP, Stage.SHARE_KEYS).to_bytes(),
        Binding("r", 1, 1, A).to_bytes(),
        Binding("r", 1, 2, A).to_bytes(),
        Binding("r", 1, 1, B).to_bytes(),
        Binding("s", 1, 1, A).to_bytes(),
    }
    assert len(encodings) == 7


def test_masked_input_replayed_into_the_next_round_is_rejected() -> None:
    d = Driver()
    d.setup()
    d.send(first := d.masked())
    d.send(d.unmask())
    d.server.finalize()
    second = d.masked(skip=(3,))
    rejection = d.server.receive(first[3])
    assert rejection is not None
    assert rejection.code is ErrorCode.BINDING_MISMATCH
    d.send(second)
    d.send(d.unmask())
    result = d.server.finalize()
    assert result.survivors == (1, 2, 4, 5)
    check_exact(result, d.updates[2])
    assert 3 in d.server.excluded


@pytest.mark.parametrize(
    ("run_id", "session"), [("run-A", 2), ("run-B", 1)], ids=["other-session", "other-run"]
)
def test_replies_and_requests_from_another_session_or_run_are_refused(
    run_id: str, session: int
) -> None:
    old = Driver(run_id=run_id, session=session)
    old.setup()
    old_masked = old.masked()
    fresh = Driver(run_id="run-A", session=1)
    fresh.setup()
    fresh_masked = fresh.masked(skip=(2,))
    rejection = fresh.server.receive(old_masked[2])
    assert rejection is not None
    assert rejection.code is ErrorCode.BINDING_MISMATCH
    fresh.send(fresh_masked)
    fresh.send(fresh.unmask())
    result = fresh.server.finalize()
    assert result.survivors == (1, 3, 4, 5)
    check_exact(result, fresh.updates[1])
    with pytest.raises(SecAggError) as err:
        fresh.nodes[1].masked_input(old.masked_requests[1], fresh.updates[2][1])
    assert err.value.code is ErrorCode.BINDING_MISMATCH


def test_setup_reply_replayed_in_a_round_is_rejected() -> None:
    d = Driver()
    reqs = d.server.advertise_keys_requests()
    adverts = {i: d.nodes[i].advertise_keys(q) for i, q in reqs.items()}
    d.send(adverts)
    d.send({i: d.nodes[i].share_keys(q) for i, q in d.server.share_keys_requests().items()})
    masked = d.masked()
    rejection = d.server.receive(adverts[1])
    assert rejection is not None
    assert rejection.code is ErrorCode.BINDING_MISMATCH
    d.send({i: m for i, m in masked.items() if i != 1})
    assert d.server.receive(masked[1]) is not None  # excluded means excluded
    d.send(d.unmask())
    result = d.server.finalize()
    assert result.survivors == (2, 3, 4, 5)
    check_exact(result, d.updates[1])


def test_tampered_setup_share_excludes_its_sender() -> None:
    d = Driver()
    reqs = d.server.advertise_keys_requests()
    d.send({i: d.nodes[i].advertise_keys(q) for i, q in reqs.items()})
    shares = {i: d.nodes[i].share_keys(q) for i, q in d.server.share_keys_requests().items()}
    sealed = bytearray(shares[3].encrypted_shares[1])
    sealed[40] ^= 0x01
    shares[3] = dataclasses.replace(
        shares[3], encrypted_shares={**shares[3].encrypted_shares, 1: bytes(sealed)}
    )
    d.send(shares)
    masked = d.masked()
    assert masked[1].rejected_senders == (3,)
    d.send(masked)
    d.send(d.unmask())
    result = d.server.finalize()
    assert result.survivors == (1, 2, 4, 5)
    check_exact(result, d.updates[1])
    assert 3 in d.server.excluded
    result = d.round()
    assert result.active == (1, 2, 4, 5)


def test_active_set_below_the_minimum_ends_the_session_with_a_code() -> None:
    d = Driver(ids=(1, 2, 3, 4), rounds=3)  # t = 3 of 4 holders
    d.setup()
    d.round(drop_a=(4,))
    with pytest.raises(SecAggError) as err:
        d.round(drop_a=(3,))
    assert err.value.code is ErrorCode.TOO_FEW_SURVIVORS
    assert d.server.failed
    with pytest.raises(SecAggError) as err:
        d.server.masked_input_requests()
    assert err.value.code is ErrorCode.BAD_STATE


def test_node_refuses_parameters_that_differ_from_its_policy() -> None:
    server = SecAggServer(
        run_id="r",
        session=1,
        config=SecAggConfig(session_rounds=5),
        participants=(1, 2, 3),
        vector_length=4,
    )
    node = SecAggNode(node_id=1, run_id="r", session=1, config=SecAggConfig(session_rounds=4))
    with pytest.raises(SecAggError) as err:
        node.advertise_keys(server.advertise_keys_requests()[1])
    assert err.value.code is ErrorCode.PARAMS_MISMATCH


def test_invalid_session_rounds_are_refused() -> None:
    with pytest.raises(SecAggError) as err:
        SecAggConfig(session_rounds=0)
    assert err.value.code is ErrorCode.INVALID_CONFIG
