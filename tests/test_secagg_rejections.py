"""Every refusal of the protocol in a one-round session (``session_rounds=1``): the round
completes exactly or fails with a coded error."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from lepton_fl.secagg import (
    AggregateResult,
    Binding,
    ErrorCode,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    SecAggConfig,
    SecAggError,
    SecAggNode,
    SecAggServer,
    ShareKeysReply,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    shamir,
)
from lepton_fl.secagg.encoding import encode, reduce

CONFIG = SecAggConfig(clipping_range=1.0, session_rounds=1)


class Round:
    """A round driven step by step, so a test can interfere between steps."""

    def __init__(
        self,
        ids: tuple[int, ...] = (1, 2, 3, 4, 5),
        *,
        run_id: str = "run-A",
        session: int = 1,
        config: SecAggConfig = CONFIG,
        length: int = 16,
    ) -> None:
        rng = np.random.default_rng(session)
        self.ids = ids
        self.updates = {i: rng.uniform(-1, 1, length).astype(np.float32) for i in ids}
        self.server = SecAggServer(
            run_id=run_id, session=session, config=config, participants=ids, vector_length=length
        )
        self.nodes = {
            i: SecAggNode(node_id=i, run_id=run_id, session=session, config=config) for i in ids
        }
        self.replies: dict[Stage, dict[int, Any]] = {}

    def advertise(self, skip: tuple[int, ...] = ()) -> None:
        reqs = self.server.advertise_keys_requests()
        self._send(
            Stage.ADVERTISE_KEYS,
            {i: self.nodes[i].advertise_keys(reqs[i]) for i in reqs if i not in skip},
        )

    def share(self, skip: tuple[int, ...] = ()) -> dict[int, ShareKeysReply]:
        reqs = self.server.share_keys_requests()
        return {i: self.nodes[i].share_keys(reqs[i]) for i in reqs if i not in skip}

    def masked(self, skip: tuple[int, ...] = ()) -> dict[int, MaskedInputReply]:
        reqs = self.server.masked_input_requests()
        return {
            i: self.nodes[i].masked_input(reqs[i], self.updates[i]) for i in reqs if i not in skip
        }

    def unmask(self, skip: tuple[int, ...] = ()) -> dict[int, UnmaskReply]:
        reqs = self.server.unmask_requests()
        return {i: self.nodes[i].unmask(reqs[i]) for i in reqs if i not in skip}

    def _send(self, stage: Stage, replies: dict[int, Any]) -> None:
        self.replies[stage] = replies
        for reply in replies.values():
            assert self.server.receive(reply) is None

    def send(self, replies: dict[int, Any]) -> None:
        for reply in replies.values():
            assert self.server.receive(reply) is None

    def run_rest(self, after: Stage) -> AggregateResult:
        order = list(Stage)
        for stage in order[order.index(after) + 1 :]:
            step = {
                Stage.SHARE_KEYS: self.share,
                Stage.MASKED_INPUT: self.masked,
                Stage.UNMASK: self.unmask,
            }[stage]
            self.send(step())
        return self.server.finalize()

    def assert_exact(self, result: AggregateResult) -> None:
        p = result.params
        total = sum(
            encode(
                self.updates[i],
                clipping_range=p.clipping_range,
                levels=p.levels,
                modulus_bits=p.modulus_bits,
            )[0]
            for i in result.survivors
        )
        assert isinstance(total, np.ndarray)
        np.testing.assert_array_equal(
            result.encoded_sum, reduce(total, modulus_bits=p.modulus_bits)[:-1]
        )


def full_round(**kwargs: Any) -> Round:
    r = Round(**kwargs)
    r.advertise()
    r.replies[Stage.SHARE_KEYS] = r.share()
    r.send(r.replies[Stage.SHARE_KEYS])
    r.replies[Stage.MASKED_INPUT] = r.masked()
    r.send(r.replies[Stage.MASKED_INPUT])
    r.replies[Stage.UNMASK] = r.unmask()
    r.send(r.replies[Stage.UNMASK])
    r.assert_exact(r.server.finalize())
    return r


@pytest.mark.parametrize(
    ("run_id", "session"), [("run-A", 1), ("run-B", 2)], ids=["other-run", "other-session"]
)
def test_replayed_message_from_another_session_or_run_is_rejected(
    run_id: str, session: int
) -> None:
    old = full_round(run_id=run_id, session=session)
    fresh = Round(run_id="run-B", session=1)
    request_for_4 = fresh.server.advertise_keys_requests()[4]
    rejection = fresh.server.receive(old.replies[Stage.ADVERTISE_KEYS][4])
    assert rejection is not None
    assert rejection.code is ErrorCode.BINDING_MISMATCH
    # The sender is dropped: even its genuine reply is refused now.
    fresh.advertise(skip=(4,))
    genuine = fresh.nodes[4].advertise_keys(request_for_4)
    assert fresh.server.receive(genuine) is not None
    result = fresh.run_rest(Stage.ADVERTISE_KEYS)
    assert result.survivors == (1, 2, 3, 5)
    fresh.assert_exact(result)


def test_replayed_message_from_another_stage_drops_the_sender() -> None:
    r = Round()
    r.advertise()
    shares = r.share()
    r.send(shares)
    masked = r.masked()
    # A share_keys reply arriving during masked_input is bound to the wrong stage.
    rejection = r.server.receive(shares[2])
    assert rejection is not None
    assert rejection.code is ErrorCode.BINDING_MISMATCH
    r.send({i: m for i, m in masked.items() if i != 2})
    assert r.server.receive(masked[2]) is not None  # dropped means dropped
    r.send(r.unmask())
    result = r.server.finalize()
    assert 2 not in result.survivors
    assert 2 in result.dropped
    r.assert_exact(result)


def test_duplicate_reply_in_the_same_stage_is_a_replay() -> None:
    r = Round()
    r.advertise()
    shares = r.share()
    r.send(shares)
    rejection = r.server.receive(shares[5])
    assert rejection is not None
    assert rejection.code is ErrorCode.DUPLICATE
    result = r.run_rest(Stage.SHARE_KEYS)
    assert result.survivors == (1, 2, 3, 4)
    r.assert_exact(result)


def test_node_refuses_a_request_from_another_session() -> None:
    old = Round(session=7)
    node = SecAggNode(node_id=1, run_id="run-A", session=8, config=CONFIG)
    with pytest.raises(SecAggError) as err:
        node.advertise_keys(old.server.advertise_keys_requests()[1])
    assert err.value.code is ErrorCode.BINDING_MISMATCH


def test_tampered_ciphertext_drops_its_sender_and_the_sum_stays_exact() -> None:
    r = Round()
    r.advertise()
    shares = r.share()
    sealed = bytearray(shares[3].encrypted_shares[1])
    sealed[40] ^= 0x01
    shares[3] = dataclasses.replace(
        shares[3], encrypted_shares={**shares[3].encrypted_shares, 1: bytes(sealed)}
    )
    r.send(shares)
    masked = r.masked()
    assert masked[1].rejected_senders == (3,)
    r.send(masked)
    result = r.run_rest(Stage.MASKED_INPUT)
    assert result.survivors == (1, 2, 4, 5)
    assert any(x.sender == 3 and x.code is ErrorCode.SHARE_AUTH_FAILED for x in result.rejections)
    r.assert_exact(result)


def test_share_redirected_to_another_recipient_fails_authentication() -> None:
    r = Round()
    r.advertise()
    shares = r.share()
    r.send(shares)
    reqs = r.server.masked_input_requests()
    forged = dict(reqs[2].encrypted_shares)
    forged[3] = shares[3].encrypted_shares[4]  # 3 -> 4's share, relabelled for 2
    reply = r.nodes[2].masked_input(
        dataclasses.replace(reqs[2], encrypted_shares=forged), r.updates[2]
    )
    assert reply.rejected_senders == (3,)


def test_share_from_an_outsider_is_rejected_by_the_server() -> None:
    r = Round()
    r.advertise()
    shares = r.share()
    outsider = dataclasses.replace(shares[1], sender=99)
    rejection = r.server.receive(outsider)
    assert rejection is not None
    assert rejection.code is ErrorCode.UNKNOWN_SENDER
    r.send(shares)
    r.assert_exact(r.run_rest(Stage.SHARE_KEYS))


def test_share_from_an_outsider_is_refused_by_the_node() -> None:
    r = Round()
    r.advertise()
    r.send(r.share())
    req = r.server.masked_input_requests()[1]
    forged = dataclasses.replace(req, encrypted_shares={**req.encrypted_shares, 99: bytes(160)})
    with pytest.raises(SecAggError) as err:
        r.nodes[1].masked_input(forged, r.updates[1])
    assert err.value.code is ErrorCode.UNKNOWN_SENDER


def test_node_refuses_to_reveal_both_masks_of_one_node() -> None:
    r = Round()
    r.advertise()
    r.send(r.share())
    r.send(r.masked())
    req = r.server.unmask_requests()[1]
    both = dataclasses.replace(req, dropped=(2,))
    with pytest.raises(SecAggError) as err:
        r.nodes[1].unmask(both)
    assert err.value.code is ErrorCode.UNMASK_BOTH
    own = UnmaskRequest(req.binding, 2, survivors=(1, 3, 4, 5), dropped=(2,))
    with pytest.raises(SecAggError) as err:
        r.nodes[2].unmask(own)
    assert err.value.code is ErrorCode.UNMASK_BOTH


def test_fewer_than_three_participants_are_refused() -> None:
    with pytest.raises(SecAggError) as err:
        SecAggServer(run_id="r", session=1, config=CONFIG, participants=(1, 2), vector_length=4)
    assert err.value.code is ErrorCode.TOO_FEW_PARTICIPANTS
    with pytest.raises(SecAggError) as err:
        SecAggConfig(min_participants=2)
    assert err.value.code is ErrorCode.INVALID_CONFIG
    r = Round(ids=(1, 2, 3))
    req = r.server.advertise_keys_requests()[1]
    sp = req.session_params
    two = dataclasses.replace(
        req,
        session_params=dataclasses.replace(
            sp, params=dataclasses.replace(sp.params, participants=(1, 2))
        ),
    )
    with pytest.raises(SecAggError) as err:
        r.nodes[1].advertise_keys(two)
    assert err.value.code is ErrorCode.TOO_FEW_PARTICIPANTS


def test_two_survivors_of_three_are_refused() -> None:
    r = Round(ids=(1, 2, 3))
    r.advertise()
    r.send(r.share())
    r.send(r.masked(skip=(3,)))
    with pytest.raises(SecAggError) as err:
        r.server.unmask_requests()
    assert err.value.code is ErrorCode.TOO_FEW_SURVIVORS


def test_fewer_than_threshold_survivors_are_refused() -> None:
    r = Round(ids=(1, 2, 3, 4, 5, 6), config=dataclasses.replace(CONFIG, threshold=5))
    r.advertise()
    r.send(r.share())
    r.send(r.masked(skip=(2, 6)))
    with pytest.raises(SecAggError) as err:
        r.server.unmask_requests()
    assert err.value.code is ErrorCode.TOO_FEW_SURVIVORS
    assert "at least 5" in str(err.value)


def test_threshold_below_a_majority_is_refused() -> None:
    with pytest.raises(SecAggError) as err:
        Round(ids=(1, 2, 3, 4, 5, 6), config=dataclasses.replace(CONFIG, threshold=3))
    assert err.value.code is ErrorCode.UNSAFE_THRESHOLD


def test_too_few_unmask_answers_fail_loudly() -> None:
    r = Round(ids=(1, 2, 3, 4, 5, 6), config=dataclasses.replace(CONFIG, threshold=5))
    r.advertise()
    r.send(r.share())
    r.send(r.masked())
    r.send(r.unmask(skip=(1, 2)))
    with pytest.raises(SecAggError) as err:
        r.server.finalize()
    assert err.value.code is ErrorCode.RECONSTRUCTION_FAILED


def _corrupt(reply: UnmaskReply, owner: int) -> UnmaskReply:
    value = (shamir.from_bytes(reply.self_mask_shares[owner]) + 1) % shamir.PRIME
    return dataclasses.replace(
        reply, self_mask_shares={**reply.self_mask_shares, owner: shamir.to_bytes(value)}
    )


def test_a_wrong_share_is_outvoted_when_spare_shares_exist() -> None:
    r = Round(ids=(1, 2, 3, 4, 5, 6))  # t = 4 of 6 holders
    r.advertise()
    r.send(r.share())
    r.send(r.masked())
    answers = r.unmask()
    answers[2] = _corrupt(answers[2], owner=1)
    r.send(answers)
    r.assert_exact(r.server.finalize())


def test_a_wrong_share_without_spares_fails_rather_than_corrupting_the_sum() -> None:
    r = Round(ids=(1, 2, 3, 4, 5, 6))
    r.advertise()
    r.send(r.share())
    r.send(r.masked())
    answers = r.unmask(skip=(5, 6))  # exactly t = 4 answers
    answers[2] = _corrupt(answers[2], owner=1)
    r.send(answers)
    with pytest.raises(SecAggError) as err:
        r.server.finalize()
    assert err.value.code is ErrorCode.RECONSTRUCTION_FAILED


def test_malformed_masked_vector_drops_the_sender() -> None:
    r = Round()
    r.advertise()
    r.send(r.share())
    masked = r.masked()
    bad = dataclasses.replace(masked[4], masked=masked[4].masked[:-1])
    rejection = r.server.receive(bad)
    assert rejection is not None
    assert rejection.code is ErrorCode.MALFORMED
    r.send({i: m for i, m in masked.items() if i != 4})
    r.send(r.unmask())
    result = r.server.finalize()
    assert result.survivors == (1, 2, 3, 5)
    r.assert_exact(result)


def test_values_out_of_range_are_clipped_and_counted() -> None:
    r = Round(length=6)
    r.updates[1] = np.array([5.0, -1.0, 1.0, np.inf, -np.inf, 0.5], dtype=np.float32)
    r.updates[2] = np.array([0.0, -3.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    r.advertise()
    r.send(r.share())
    r.send(r.masked())
    r.send(r.unmask())
    result = r.server.finalize()
    stats = r.nodes[1].encoding_stats
    assert stats is not None
    assert stats.clipped == 3
    assert stats.total == 6
    assert result.clipped_total == 4
    expected = sum(np.clip(r.updates[i].astype(np.float64), -1, 1) for i in r.ids)
    assert np.all(np.abs(result.values - expected) <= result.error_bound)


def test_nan_input_is_refused() -> None:
    with pytest.raises(SecAggError) as err:
        encode(np.array([np.nan]), clipping_range=1.0, levels=100, modulus_bits=32)
    assert err.value.code is ErrorCode.NON_FINITE_INPUT
    r = Round()
    r.advertise()
    r.send(r.share())
    req = r.server.masked_input_requests()[1]
    r.updates[1][3] = np.nan
    with pytest.raises(SecAggError) as err:
        r.nodes[1].masked_input(req, r.updates[1])
    assert err.value.code is ErrorCode.NON_FINITE_INPUT
    assert r.nodes[1].failed


def test_node_refuses_parameters_outside_its_policy() -> None:
    r = Round()
    looser = SecAggNode(
        node_id=1, run_id="run-A", session=1, config=dataclasses.replace(CONFIG, clipping_range=9.0)
    )
    with pytest.raises(SecAggError) as err:
        looser.advertise_keys(r.server.advertise_keys_requests()[1])
    assert err.value.code is ErrorCode.PARAMS_MISMATCH


def test_node_refuses_an_altered_copy_of_its_own_key() -> None:
    r = Round()
    r.advertise()
    req = r.server.share_keys_requests()[1]
    keys = dict(req.public_keys)
    keys[1] = PublicKeys(enc=keys[2].enc, masks=keys[1].masks)
    with pytest.raises(SecAggError) as err:
        r.nodes[1].share_keys(dataclasses.replace(req, public_keys=keys))
    assert err.value.code is ErrorCode.BAD_KEY


def test_stages_run_once_and_in_order() -> None:
    r = Round()
    r.advertise()
    with pytest.raises(SecAggError) as err:
        r.nodes[1].masked_input(
            MaskedInputRequest(Binding("run-A", 1, 1, Stage.MASKED_INPUT), 1, r.ids, (), {}),
            r.updates[1],
        )
    assert err.value.code is ErrorCode.BAD_STATE
    with pytest.raises(SecAggError) as err:
        r.server.unmask_requests()
    assert err.value.code is ErrorCode.BAD_STATE


def test_low_order_public_key_is_rejected() -> None:
    r = Round()
    reqs = r.server.advertise_keys_requests()
    replies = {i: r.nodes[i].advertise_keys(reqs[i]) for i in reqs}
    replies[3] = dataclasses.replace(replies[3], keys=PublicKeys(enc=bytes(32), masks=(bytes(32),)))
    rejection = r.server.receive(replies.pop(3))
    assert rejection is not None
    assert rejection.code is ErrorCode.BAD_KEY
    r.send(replies)
    result = r.run_rest(Stage.ADVERTISE_KEYS)
    assert result.survivors == (1, 2, 4, 5)
    r.assert_exact(result)
