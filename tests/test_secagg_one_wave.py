"""One-wave SecAgg rounds (``dropout_recovery=False``): pair masks only, no unmask wave.

The sum of the whole active set is exact; no single masked input, and no sum over a proper
subset of the nodes, is the plain one; nothing is ever revealed (an unmask request is
refused); a dropout voids the round and the session goes on without the node; and a node
refuses a session whose mode is not the one its federation spec names."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest

from lepton_fl.secagg import (
    Binding,
    ErrorCode,
    MaskedInputReply,
    RoundVoidedError,
    SecAggConfig,
    SecAggError,
    SecAggNode,
    SecAggServer,
    Stage,
    UnmaskRequest,
)
from lepton_fl.secagg.encoding import encode, reduce
from lepton_fl.secagg.simulate import run_local_session

ONE_WAVE = SecAggConfig(clipping_range=1.0, session_rounds=3, dropout_recovery=False)
IDS = (3, 8, 21, 40, 77)
LENGTH = 24


def _updates(rounds: int, ids: tuple[int, ...] = IDS) -> list[dict[int, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{i: rng.uniform(-1, 1, LENGTH) for i in ids} for _ in range(rounds)]


def _encoded(server: SecAggServer, update: np.ndarray) -> np.ndarray:
    params = server.params
    words, _ = encode(
        update,
        clipping_range=params.clipping_range,
        levels=params.levels,
        modulus_bits=params.modulus_bits,
    )
    return words


def _ring_sum(server: SecAggServer, vectors: list[np.ndarray]) -> np.ndarray:
    total = np.sum(np.stack(vectors), axis=0, dtype=vectors[0].dtype)
    reduce(total, modulus_bits=server.params.modulus_bits)
    return total


def test_every_round_is_one_wave_and_its_sum_is_exact() -> None:
    updates = _updates(3)
    state = run_local_session(ONE_WAVE, updates)

    assert state.error is None
    assert not state.voided
    assert not any(stage is Stage.UNMASK for _, stage in state.requests)
    assert [r.round for r in state.results] == [1, 2, 3]
    for result, round_updates in zip(state.results, updates, strict=True):
        want = _ring_sum(state.server, [_encoded(state.server, u) for u in round_updates.values()])
        np.testing.assert_array_equal(result.encoded_sum, want[:-1])
        assert result.survivors == IDS
        assert result.dropped == ()
    assert state.server.done


def test_no_masked_input_nor_any_partial_sum_is_the_plain_one() -> None:
    """What the coordinator holds after a round: every masked input. Only the sum of all of
    them opens; each alone, and every sum over a proper subset, is still masked."""
    updates = _updates(1)
    state = run_local_session(dataclasses.replace(ONE_WAVE, session_rounds=1), updates)
    masked = {r.sender: r.masked for r in state.replies if isinstance(r, MaskedInputReply)}
    plain = {i: _encoded(state.server, updates[0][i]) for i in IDS}
    assert set(masked) == set(IDS)
    for size in range(1, len(IDS)):
        for subset in itertools.combinations(IDS, size):
            got = _ring_sum(state.server, [masked[i] for i in subset])
            want = _ring_sum(state.server, [plain[i] for i in subset])
            assert np.count_nonzero(got != want) >= LENGTH - 1, subset
    everyone = _ring_sum(state.server, list(masked.values()))
    np.testing.assert_array_equal(everyone, _ring_sum(state.server, list(plain.values())))


def test_a_dropout_voids_the_round_and_the_session_goes_on_without_the_node() -> None:
    updates = _updates(3)
    gone = 21
    state = run_local_session(ONE_WAVE, updates, drop_at={gone: (2, Stage.MASKED_INPUT)})

    assert state.error is None
    assert list(state.voided) == [2]
    voided = state.voided[2]
    assert voided.code is ErrorCode.ROUND_VOID
    assert voided.dropped == (gone,)
    assert [r.round for r in state.results] == [1, 3]
    third = state.results[-1]
    survivors = tuple(i for i in IDS if i != gone)
    assert third.survivors == survivors
    assert third.active == survivors
    want = _ring_sum(state.server, [_encoded(state.server, updates[2][i]) for i in survivors])
    np.testing.assert_array_equal(third.encoded_sum, want[:-1])
    assert gone in state.server.excluded


def test_a_void_round_that_leaves_too_few_ends_the_session() -> None:
    ids = (1, 2, 3)
    state = run_local_session(ONE_WAVE, _updates(3, ids), drop_at={2: (1, Stage.MASKED_INPUT)})
    assert list(state.voided) == [1]
    assert state.server.failed
    assert state.results == []


def _after_round_one() -> tuple[SecAggServer, dict[int, SecAggNode]]:
    state = run_local_session(ONE_WAVE, _updates(1))
    assert state.error is None
    assert len(state.results) == 1
    return state.server, state.nodes


def test_a_node_refuses_to_reveal_anything_when_asked_to_unmask() -> None:
    """The coordinator holds every masked input of round 1 and claims node 21 dropped: a
    two-wave node would reveal 21's mask key; a one-wave node reveals nothing, to any ask."""
    server, nodes = _after_round_one()
    binding = Binding(server.run_id, server.session, 1, Stage.UNMASK)
    for survivors, dropped in [(IDS, ()), ((3, 8, 40, 77), (21,))]:
        node = run_local_session(ONE_WAVE, _updates(1)).nodes[3]
        with pytest.raises(SecAggError) as refused:
            node.unmask(UnmaskRequest(binding, 3, survivors, dropped))
        assert refused.value.code is ErrorCode.NO_UNMASK
        assert node.failed  # it left the session: no later round from this coordinator
    with pytest.raises(SecAggError) as no_wave:
        SecAggServer(
            run_id="r", session=1, config=ONE_WAVE, participants=IDS, vector_length=LENGTH
        ).unmask_requests()
    assert no_wave.value.code is ErrorCode.NO_UNMASK
    assert not any(n.failed for n in nodes.values())


@pytest.mark.parametrize(("node_recovers", "offered_recovers"), [(False, True), (True, False)])
def test_a_node_refuses_a_session_in_the_other_mode(
    node_recovers: bool, offered_recovers: bool
) -> None:
    server = SecAggServer(
        run_id="r",
        session=1,
        config=dataclasses.replace(ONE_WAVE, dropout_recovery=offered_recovers),
        participants=IDS,
        vector_length=LENGTH,
    )
    node = SecAggNode(
        node_id=3,
        run_id="r",
        session=1,
        config=dataclasses.replace(ONE_WAVE, dropout_recovery=node_recovers),
    )
    with pytest.raises(SecAggError) as refused:
        node.advertise_keys(server.advertise_keys_requests()[3])
    assert refused.value.code is ErrorCode.PARAMS_MISMATCH


def _drive_round_one(
    tamper: Any = None,
) -> tuple[SecAggServer, dict[int, MaskedInputReply], dict[int, np.ndarray]]:
    updates = _updates(1)[0]
    config = dataclasses.replace(ONE_WAVE, session_rounds=1)
    server = SecAggServer(
        run_id="r", session=1, config=config, participants=IDS, vector_length=LENGTH
    )
    nodes = {i: SecAggNode(node_id=i, run_id="r", session=1, config=config) for i in IDS}
    for request in server.advertise_keys_requests().values():
        server.receive(nodes[request.recipient].advertise_keys(request))
    for request in server.share_keys_requests().values():
        server.receive(nodes[request.recipient].share_keys(request))
    requests = server.masked_input_requests()
    if tamper is not None:
        requests = tamper(requests)
    replies = {i: nodes[i].masked_input(requests[i], updates[i]) for i in requests}
    plain = {i: _encoded(server, updates[i]) for i in IDS}
    return server, replies, plain


def test_equivocating_about_the_active_set_opens_no_sum() -> None:
    """A coordinator that tells node 3 that node 77 is not active (and everyone else that it
    is) gets five masked inputs in which no subset's sum is the plain one."""

    def drop_77_for_node_3(requests: dict[int, Any]) -> dict[int, Any]:
        request = requests[3]
        active = tuple(a for a in request.active if a != 77)
        inbox = {s: b for s, b in request.encrypted_shares.items() if s != 77}
        requests[3] = dataclasses.replace(request, active=active, encrypted_shares=inbox)
        return requests

    server, replies, plain = _drive_round_one(drop_77_for_node_3)
    assert set(replies) == set(IDS)
    for size in range(1, len(IDS) + 1):
        for subset in itertools.combinations(IDS, size):
            got = _ring_sum(server, [replies[i].masked for i in subset])
            want = _ring_sum(server, [plain[i] for i in subset])
            assert np.count_nonzero(got != want) >= LENGTH - 1, subset
    for reply in replies.values():
        server.receive(reply)
    result = server.finalize()  # the coordinator cannot tell: it decodes noise, not a sum
    honest = _ring_sum(server, list(plain.values()))
    assert np.count_nonzero(result.encoded_sum != honest[:-1]) >= LENGTH - 1


def test_an_active_set_below_the_minimum_is_refused_by_the_node() -> None:
    def two_only(requests: dict[int, Any]) -> dict[int, Any]:
        requests[3] = dataclasses.replace(requests[3], active=(3, 8))
        return requests

    with pytest.raises(SecAggError) as refused:
        _drive_round_one(two_only)
    assert refused.value.code is ErrorCode.TOO_FEW_PARTICIPANTS


def test_a_rejected_masked_input_voids_the_round_it_came_in() -> None:
    server, replies, _ = _drive_round_one()
    bad = replies[40]
    replies[40] = dataclasses.replace(bad, masked=bad.masked[:-1])  # malformed: wrong length
    rejections = [server.receive(reply) for reply in replies.values()]
    assert [r.sender for r in rejections if r is not None] == [40]
    with pytest.raises(RoundVoidedError) as voided:
        server.finalize()
    assert voided.value.dropped == (40,)
