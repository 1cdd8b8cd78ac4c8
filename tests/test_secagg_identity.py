"""Signed key advertisements (issue 10): an active coordinator can neither substitute a
node's session keys nor invent participants; every honest node refuses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from lepton_fl.config import Member
from lepton_fl.secagg import (
    AdvertiseKeysReply,
    ErrorCode,
    NodeIdentity,
    PublicKeys,
    SecAggConfig,
    SecAggError,
    SecAggNode,
    SecAggServer,
    ShareKeysRequest,
)
from lepton_fl.secagg.crypto import generate_key_pair
from lepton_fl.secagg.encoding import encode, reduce
from lepton_fl.secagg.identity import load_member_key, load_signing_key
from lepton_fl.wire.secagg import (
    secagg_reply_from_records,
    secagg_reply_to_records,
    secagg_request_from_records,
    secagg_request_to_records,
)

CONFIG = SecAggConfig(clipping_range=1.0, session_rounds=1)
MEMBERS = (1, 2, 3, 4)
LENGTH = 8
ENROLLED = {n: ec.generate_private_key(ec.SECP384R1()) for n in MEMBERS}
PUBLIC = {n: k.public_key() for n, k in ENROLLED.items()}


def make_node(node_id: int, *, session: int = 1) -> SecAggNode:
    identity = NodeIdentity(signing_key=ENROLLED[node_id], members=PUBLIC)
    return SecAggNode(
        node_id=node_id, run_id="run-A", session=session, config=CONFIG, identity=identity
    )


def make_server(participants: tuple[int, ...] = MEMBERS, *, session: int = 1) -> SecAggServer:
    return SecAggServer(
        run_id="run-A",
        session=session,
        config=CONFIG,
        participants=participants,
        vector_length=LENGTH,
    )


def advertised(server: SecAggServer, nodes: dict[int, SecAggNode]) -> dict[int, AdvertiseKeysReply]:
    requests = server.advertise_keys_requests()
    replies = {n: nodes[n].advertise_keys(requests[n]) for n in nodes}
    for reply in replies.values():
        assert server.receive(reply) is None
    return replies


def refusals(nodes: dict[int, SecAggNode], requests: dict[int, ShareKeysRequest]) -> set[str]:
    codes = set()
    for n, node in nodes.items():
        with pytest.raises(SecAggError) as err:
            node.share_keys(requests[n])
        codes.add(err.value.code.value)
    return codes


def test_signed_session_sums_exactly() -> None:
    server, nodes = make_server(), {n: make_node(n) for n in MEMBERS}
    rng = np.random.default_rng(0)
    updates = {n: rng.uniform(-1, 1, LENGTH).astype(np.float32) for n in MEMBERS}
    for reply in advertised(server, nodes).values():
        assert reply.keys.signature
    for n, share in server.share_keys_requests().items():
        assert server.receive(nodes[n].share_keys(share)) is None
    for n, masked in server.masked_input_requests().items():
        assert server.receive(nodes[n].masked_input(masked, updates[n])) is None
    for n, unmask in server.unmask_requests().items():
        assert server.receive(nodes[n].unmask(unmask)) is None
    result = server.finalize()
    p = result.params
    total = sum(
        encode(u, clipping_range=p.clipping_range, levels=p.levels, modulus_bits=p.modulus_bits)[0]
        for u in updates.values()
    )
    assert isinstance(total, np.ndarray)
    expected = reduce(total, modulus_bits=p.modulus_bits)[:-1]
    np.testing.assert_array_equal(result.encoded_sum, expected)


def substituted(keys: PublicKeys, signer: ec.EllipticCurvePrivateKey | None) -> PublicKeys:
    """The coordinator's own session keys in place of ``keys``, signed by ``signer``."""
    fresh = PublicKeys(
        enc=generate_key_pair()[1], masks=tuple(generate_key_pair()[1] for _ in keys.masks)
    )
    if signer is None:
        return fresh
    forger = NodeIdentity(signing_key=signer, members={})
    return dataclasses.replace(fresh, signature=forger.sign("run-A", 1, 4, fresh))


@pytest.mark.parametrize(
    "signer",
    [None, ec.generate_private_key(ec.SECP384R1()), ENROLLED[1]],
    ids=["unsigned", "coordinator-key", "another-members-key"],
)
def test_substituted_key_advertisement_is_refused_by_every_honest_node(
    signer: ec.EllipticCurvePrivateKey | None,
) -> None:
    server, nodes = make_server(), {n: make_node(n) for n in MEMBERS}
    advertised(server, nodes)
    requests = server.share_keys_requests()
    honest = {n: nodes[n] for n in (1, 2, 3)}
    forged = {
        n: dataclasses.replace(
            r,
            public_keys={**r.public_keys, 4: substituted(r.public_keys[4], signer)},
        )
        for n, r in requests.items()
    }
    assert refusals(honest, forged) == {ErrorCode.BAD_SIGNATURE.value}


def test_keys_signed_for_another_session_are_refused() -> None:
    old_server, old_nodes = make_server(session=1), {n: make_node(n, session=1) for n in MEMBERS}
    old = advertised(old_server, old_nodes)
    server, nodes = make_server(session=2), {n: make_node(n, session=2) for n in MEMBERS}
    advertised(server, nodes)
    requests = server.share_keys_requests()
    replayed = {  # node 4's genuine, signed keys of session 1 replayed into session 2
        n: dataclasses.replace(r, public_keys={**r.public_keys, 4: old[4].keys})
        for n, r in requests.items()
    }
    assert refusals({n: nodes[n] for n in (1, 2, 3)}, replayed) == {ErrorCode.BAD_SIGNATURE.value}


def test_altered_signed_keys_are_refused() -> None:
    server, nodes = make_server(), {n: make_node(n) for n in MEMBERS}
    advertised(server, nodes)
    requests = server.share_keys_requests()
    swapped = {  # node 4's signature on node 3's keys
        n: dataclasses.replace(
            r,
            public_keys={
                **r.public_keys,
                3: dataclasses.replace(r.public_keys[3], signature=r.public_keys[4].signature),
            },
        )
        for n, r in requests.items()
    }
    assert refusals({n: nodes[n] for n in (1, 2, 4)}, swapped) == {ErrorCode.BAD_SIGNATURE.value}


def test_invented_participant_is_refused_at_advertise_time() -> None:
    server = make_server((1, 2, 3, 4, 99))  # 99: a node the coordinator controls
    requests = server.advertise_keys_requests()
    for n in MEMBERS:
        with pytest.raises(SecAggError) as err:
            make_node(n).advertise_keys(requests[n])
        assert err.value.code is ErrorCode.NOT_A_MEMBER


def test_signatures_survive_the_wire() -> None:
    server, nodes = make_server(), {n: make_node(n) for n in MEMBERS}
    replies = advertised(server, nodes)
    decoded = secagg_reply_from_records(secagg_reply_to_records(replies[2]))
    assert decoded == replies[2]
    request = server.share_keys_requests()[1]
    assert secagg_request_from_records(secagg_request_to_records(request)) == request
    decoded_request = secagg_request_from_records(secagg_request_to_records(request))
    assert isinstance(decoded_request, ShareKeysRequest)
    nodes[1].share_keys(decoded_request)


def test_openssh_keys_load() -> None:
    private = ENROLLED[1].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        PUBLIC[1]
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    identity = NodeIdentity(
        signing_key=load_signing_key(private), members={1: load_member_key(public)}
    )
    keys = PublicKeys(enc=b"e" * 32, masks=(b"m" * 32,))
    signed = dataclasses.replace(keys, signature=identity.sign("run-A", 1, 1, keys))
    assert identity.verify("run-A", 1, 1, signed)
    assert not identity.verify("run-A", 1, 2, signed)  # not a member
    assert not identity.verify("run-B", 1, 1, signed)  # another run
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        load_member_key("ssh-ed25519 AAAA")


def test_a_members_enrolled_key_is_an_openssh_ec_key_line() -> None:
    line = (
        PUBLIC[1]
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    member = Member(name="site-a", node_id=1, public_key=f"{line} site-a@host\n")
    assert member.public_key == line  # the comment is not part of what is signed
    assert load_member_key(line).public_numbers() == PUBLIC[1].public_numbers()
    with pytest.raises(ValidationError, match="OpenSSH EC public key"):
        Member(name="site-a", node_id=1, public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
