"""SecAgg+ session messages on the wire: exact round trips and strict rejection of garbage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from lepton_fl import wire
from lepton_fl.secagg import (
    SETUP,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    Reply,
    Request,
    RoundParams,
    SecAggConfig,
    SecAggNode,
    SecAggServer,
    SessionParams,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from lepton_fl.secagg.simulate import run_local_session
from lepton_fl.wire import secagg as wire_secagg

SEED = bytes(range(32))
BIG = 2**64 - 1  # the largest Flower node id
HIGH = 2**63 + 11  # does not fit a signed int64
IDS = [5, 17, HIGH, BIG]
DROPPED = 17


def _via_bytes(records: RecordDict) -> RecordDict:
    back = wire.records_from_bytes(wire.records_to_bytes(records))
    assert back == records
    return back


def _request_trip(request: Request) -> Request:
    return wire_secagg.secagg_request_from_records(
        _via_bytes(wire_secagg.secagg_request_to_records(request))
    )


def _reply_trip(reply: Reply) -> Reply:
    return wire_secagg.secagg_reply_from_records(
        _via_bytes(wire_secagg.secagg_reply_to_records(reply))
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, MaskedInputReply) and isinstance(b, MaskedInputReply):
        return (
            (a.binding, a.sender, a.rejected_senders) == (b.binding, b.sender, b.rejected_senders)
            and a.masked.dtype == b.masked.dtype
            and a.masked.shape == b.masked.shape
            and np.array_equal(a.masked, b.masked)
        )
    return a == b


def _updates() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {i: rng.uniform(-1, 1, size=11) for i in IDS}


def test_secagg_session_over_the_wire_sums_exactly() -> None:
    config = SecAggConfig(min_participants=3)
    updates = _updates()
    server = SecAggServer(
        run_id="run-7",
        session=3,
        config=config,
        participants=IDS,
        vector_length=11,
        graph_seed=SEED,
    )
    nodes = {i: SecAggNode(node_id=i, run_id="run-7", session=3, config=config) for i in IDS}
    crossed: set[str] = set()

    def wave(requests: dict[int, Any], stage: Stage) -> None:
        for node_id, request in requests.items():
            got = _request_trip(request)
            assert _same(got, request)
            crossed.add(type(got).__name__)
            if stage is Stage.MASKED_INPUT and node_id == DROPPED:
                continue  # goes silent for good
            if node_id == DROPPED and stage is Stage.UNMASK:
                continue
            node = nodes[node_id]
            reply: Reply
            if isinstance(got, AdvertiseKeysRequest):
                reply = node.advertise_keys(got)
            elif isinstance(got, ShareKeysRequest):
                reply = node.share_keys(got)
            elif isinstance(got, MaskedInputRequest):
                reply = node.masked_input(got, updates[node_id])
            else:
                assert isinstance(got, UnmaskRequest)
                reply = node.unmask(got)
            back = _reply_trip(reply)
            assert _same(back, reply)
            crossed.add(type(back).__name__)
            assert server.receive(back) is None

    wave(server.advertise_keys_requests(), Stage.ADVERTISE_KEYS)
    wave(server.share_keys_requests(), Stage.SHARE_KEYS)
    wave(server.masked_input_requests(), Stage.MASKED_INPUT)
    wave(server.unmask_requests(), Stage.UNMASK)
    result = server.finalize()

    direct = run_local_session(
        config,
        [updates],
        run_id="run-7",
        session=3,
        drop_at={DROPPED: (1, Stage.MASKED_INPUT)},
        graph_seed=SEED,
    )
    assert direct.error is None
    expected = direct.results[0]
    assert result.dropped == (DROPPED,) == expected.dropped
    assert result.survivors == expected.survivors
    assert result.encoded_sum.dtype == expected.encoded_sum.dtype
    assert np.array_equal(result.encoded_sum, expected.encoded_sum)
    assert np.array_equal(result.values, expected.values)
    assert len(crossed) == 8  # every request and reply type crossed the wire


B_SETUP = Binding(run_id="r", session=2, round=SETUP, stage=Stage.ADVERTISE_KEYS)
B_SHARE = Binding(run_id="r", session=2, round=SETUP, stage=Stage.SHARE_KEYS)
B_MASK = Binding(run_id="r", session=2, round=1, stage=Stage.MASKED_INPUT)
B_UNMASK = Binding(run_id="r", session=2, round=7, stage=Stage.UNMASK)
PARAMS = SessionParams(
    params=RoundParams(
        participants=(0, 5, HIGH, BIG),
        neighbours=3,
        threshold=3,
        clipping_range=0.25,
        modulus_bits=40,
        levels=12345,
        vector_length=11,
        graph_seed=SEED,
        min_participants=3,
    ),
    rounds=4,
)
KEYS = PublicKeys(enc=b"e" * 32, masks=(b"m1" * 16, b"m2" * 16))

REQUESTS: list[Request] = [
    AdvertiseKeysRequest(binding=B_SETUP, recipient=BIG, session_params=PARAMS),
    ShareKeysRequest(
        binding=B_SHARE,
        recipient=0,
        public_keys={0: KEYS, HIGH: PublicKeys(enc=b"", masks=()), BIG: KEYS},
    ),
    ShareKeysRequest(binding=B_SHARE, recipient=1, public_keys={}),
    MaskedInputRequest(
        binding=B_MASK,
        recipient=HIGH,
        active=(0, 5, HIGH),
        excluded=(BIG,),
        encrypted_shares={5: b"ct\x00", BIG: b""},
    ),
    MaskedInputRequest(binding=B_MASK, recipient=HIGH, active=(), excluded=(), encrypted_shares={}),
    UnmaskRequest(binding=B_UNMASK, recipient=5, survivors=(5, HIGH), dropped=(BIG,)),
]
REPLIES: list[Reply] = [
    AdvertiseKeysReply(binding=B_SETUP, sender=HIGH, keys=KEYS),
    ShareKeysReply(
        binding=B_SHARE,
        sender=BIG,
        encrypted_shares={0: b"a", HIGH: b"b" * 100},
        self_mask_commitments=(b"c" * 32, b"d" * 32),
    ),
    MaskedInputReply(
        binding=B_MASK,
        sender=BIG,
        masked=np.arange(11, dtype=np.uint64) * (2**60),
        rejected_senders=(HIGH,),
    ),
    MaskedInputReply(binding=B_MASK, sender=0, masked=np.arange(6, dtype=">i4").reshape(2, 3)),
    UnmaskReply(
        binding=B_UNMASK,
        sender=5,
        self_mask_shares={5: b"s", HIGH: b"t"},
        mask_key_shares={BIG: b"k" * 40},
    ),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda m: type(m).__name__)
def test_secagg_request_roundtrips(request_: Request) -> None:
    got = _request_trip(request_)
    assert type(got) is type(request_)
    assert got == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda m: type(m).__name__)
def test_secagg_reply_roundtrips(reply: Reply) -> None:
    got = _reply_trip(reply)
    assert type(got) is type(reply)
    assert _same(got, reply)


def test_secagg_float_vector_is_not_encoded() -> None:
    reply = MaskedInputReply(binding=B_MASK, sender=1, masked=np.zeros(3))
    with pytest.raises(wire.WireError, match="integer dtype"):
        wire_secagg.secagg_reply_to_records(reply)


Mutate = Callable[[RecordDict], None]


def _cfg(records: RecordDict) -> ConfigRecord:
    record = records["secagg"]
    assert isinstance(record, ConfigRecord)
    return record


def _set(key: str, value: Any) -> Mutate:
    def apply(records: RecordDict) -> None:
        _cfg(records)[key] = value

    return apply


def _drop(key: str) -> Mutate:
    def apply(records: RecordDict) -> None:
        del _cfg(records)[key]

    return apply


def _set_vector(vector: np.ndarray) -> Mutate:
    def apply(records: RecordDict) -> None:
        records["secagg.masked"] = ArrayRecord({"masked": Array.from_numpy_ndarray(vector)})

    return apply


def _tamper_array(attr: str, value: Any) -> Mutate:
    def apply(records: RecordDict) -> None:
        record = records["secagg.masked"]
        assert isinstance(record, ArrayRecord)
        setattr(record["masked"], attr, value)

    return apply


def _del_record(name: str) -> Mutate:
    def apply(records: RecordDict) -> None:
        del records[name]

    return apply


def _replace_config(records: RecordDict) -> None:
    records["secagg"] = MetricRecord({"wire-version": 1})


REQUESTS_TYPES = (AdvertiseKeysRequest, ShareKeysRequest, MaskedInputRequest, UnmaskRequest)
ADV_REQ, SHARE_REQ, MASK_REQ, UNMASK_REQ = REQUESTS[0], REQUESTS[1], REQUESTS[3], REQUESTS[5]
ADV_REP, SHARE_REP, MASK_REP, UNMASK_REP = REPLIES[0], REPLIES[1], REPLIES[2], REPLIES[4]

MALFORMED: list[tuple[str, Request | Reply, Mutate, str]] = [
    ("unknown-kind", UNMASK_REQ, _set("kind", "Bogus"), "Unknown SecAgg request kind 'Bogus'"),
    ("reply-as-request", UNMASK_REQ, _set("kind", "UnmaskReply"), "Unknown SecAgg request"),
    ("request-as-reply", ADV_REP, _set("kind", "UnmaskRequest"), "Unknown SecAgg reply"),
    ("kind-not-str", ADV_REP, _set("kind", 3), "'kind' is missing or not a str"),
    ("other-version", MASK_REQ, _set("wire-version", wire.WIRE_VERSION + 1), "not supported"),
    ("no-version", MASK_REQ, _drop("wire-version"), "not supported"),
    ("no-record", MASK_REQ, _del_record("secagg"), "'secagg' is missing"),
    ("not-config", MASK_REQ, _replace_config, "'secagg' is missing or not a ConfigRecord"),
    ("no-recipient", MASK_REQ, _drop("recipient"), "'recipient' is missing"),
    ("no-sender", ADV_REP, _drop("sender"), "'sender' is missing"),
    ("no-run-id", ADV_REP, _drop("run-id"), "'run-id' is missing"),
    ("session-str", ADV_REP, _set("session", "2"), "'session' is missing or not an int"),
    ("session-bool", ADV_REP, _set("session", True), "'session' is missing or not an int"),
    ("round-int", ADV_REP, _set("round", 1), "'round' is missing or not a str"),
    ("round-negative", ADV_REP, _set("round", "-1"), "'round' .* not a canonical decimal"),
    ("round-too-big", ADV_REP, _set("round", str(2**63)), "'round' .* outside"),
    ("bad-stage", ADV_REP, _set("stage", "session_train"), "'stage' .* not a SecAgg stage"),
    ("id-negative", MASK_REQ, _set("recipient", "-1"), "'recipient' .* canonical decimal"),
    ("id-2**64", MASK_REQ, _set("recipient", str(2**64)), r"'recipient' .* outside \[0, "),
    ("id-huge", MASK_REQ, _set("recipient", "9" * 500), "'recipient' .* canonical decimal"),
    ("id-hex", MASK_REQ, _set("recipient", "0x10"), "'recipient' .* canonical decimal"),
    ("id-padded", MASK_REQ, _set("recipient", " 5"), "'recipient' .* canonical decimal"),
    ("id-leading-0", MASK_REQ, _set("recipient", "05"), "'recipient' .* canonical decimal"),
    ("id-unicode", MASK_REQ, _set("recipient", "\u0665"), "'recipient' .* canonical decimal"),
    ("id-as-int", MASK_REQ, _set("recipient", 5), "'recipient' is missing or not a str"),
    ("ids-as-ints", MASK_REQ, _set("active", [5, 17]), "'active' must be a list of str"),
    ("ids-not-list", MASK_REQ, _set("active", "5"), "'active' is missing or not a list"),
    ("id-in-list", UNMASK_REQ, _set("dropped", ["1", "x"]), "'dropped' .* canonical decimal"),
    ("no-excluded", MASK_REQ, _drop("excluded"), "'excluded' is missing"),
    (
        "shares-length",
        MASK_REQ,
        _set("encrypted-shares-blobs", [b"x"]),
        "'encrypted-shares-ids' and 'encrypted-shares-blobs' must have the same length",
    ),
    (
        "shares-not-bytes",
        UNMASK_REP,
        _set("mask-key-shares-blobs", ["k"]),
        "'mask-key-shares-blobs' must be a list of bytes",
    ),
    (
        "shares-duplicate-id",
        SHARE_REP,
        _set("encrypted-shares-ids", ["0", "0"]),
        "'encrypted-shares-ids' lists the same node id more than once",
    ),
    (
        "keys-length",
        SHARE_REQ,
        _set("public-keys-enc", [b"e"]),
        "'public-keys-ids' and 'public-keys-enc' must have the same length",
    ),
    (
        "mask-counts",
        SHARE_REQ,
        _set("public-keys-mask-counts", [2, 2, 2]),
        "'public-keys-mask-counts' does not add up",
    ),
    (
        "mask-counts-negative",
        SHARE_REQ,
        _set("public-keys-mask-counts", [4, -1, 1]),
        "'public-keys-mask-counts' does not add up",
    ),
    ("enc-key-str", ADV_REP, _set("enc-key", "e"), "'enc-key' is missing or not a bytes"),
    ("no-mask-keys", ADV_REP, _drop("mask-keys"), "'mask-keys' is missing or not a list"),
    ("no-commitments", SHARE_REP, _drop("self-mask-commitments"), "'self-mask-commitments'"),
    ("params-no-seed", ADV_REQ, _drop("graph-seed"), "'graph-seed' is missing"),
    ("params-levels", ADV_REQ, _set("levels", 1.5), "'levels' is missing or not an int"),
    ("params-clip", ADV_REQ, _set("clipping-range", "x"), "'clipping-range' is missing"),
    ("params-rounds", ADV_REQ, _drop("session-rounds"), "'session-rounds' is missing"),
    ("params-ids", ADV_REQ, _set("participants", ["1", "-2"]), "'participants' .* decimal"),
    ("float-vector", MASK_REP, _set_vector(np.zeros(3)), "integer dtype, not float64"),
    ("bool-vector", MASK_REP, _set_vector(np.zeros(3, bool)), "integer dtype, not bool"),
    ("no-vector", MASK_REP, _del_record("secagg.masked"), "'secagg.masked' is missing"),
    ("vector-garbage", MASK_REP, _tamper_array("data", b"junk"), "could not be decoded"),
    ("vector-lies", MASK_REP, _tamper_array("dtype", "int8"), "declared dtype and shape"),
    ("no-rejected", MASK_REP, _drop("rejected-senders"), "'rejected-senders' is missing"),
]


@pytest.mark.parametrize(
    ("message", "mutate", "phrase"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_secagg_malformed_records_raise_wire_error(
    message: Request | Reply, mutate: Mutate, phrase: str
) -> None:
    if isinstance(message, REQUESTS_TYPES):
        records = wire_secagg.secagg_request_to_records(message)
        mutate(records)
        with pytest.raises(wire.WireError, match=phrase):
            wire_secagg.secagg_request_from_records(records)
    else:
        records = wire_secagg.secagg_reply_to_records(message)
        mutate(records)
        with pytest.raises(wire.WireError, match=phrase):
            wire_secagg.secagg_reply_from_records(records)


@pytest.mark.parametrize("garbage", [None, 42, {"secagg": 1}, RecordDict()])
def test_secagg_non_records_raise_wire_error(garbage: Any) -> None:
    with pytest.raises(wire.WireError):
        wire_secagg.secagg_request_from_records(cast(RecordDict, garbage))
    with pytest.raises(wire.WireError):
        wire_secagg.secagg_reply_from_records(cast(RecordDict, garbage))


def test_secagg_flipped_bytes_only_ever_raise_wire_error() -> None:
    rng = np.random.default_rng(0)
    decoded = 0
    for message in [*REQUESTS, *REPLIES]:
        is_request = isinstance(message, REQUESTS_TYPES)
        if is_request:
            data = wire.records_to_bytes(
                wire_secagg.secagg_request_to_records(cast(Request, message))
            )
        else:
            data = wire.records_to_bytes(wire_secagg.secagg_reply_to_records(cast(Reply, message)))
        for _ in range(40):
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=3):
                buf[pos] = int(rng.integers(0, 256))
            try:
                records = wire.records_from_bytes(bytes(buf))
            except wire.WireError:  # the byte parser refuses it, and only with WireError
                continue
            decoded += 1
            try:
                if is_request:
                    wire_secagg.secagg_request_from_records(records)
                else:
                    wire_secagg.secagg_reply_from_records(records)
            except wire.WireError:
                pass
    assert decoded > 20  # enough corruptions still parse and reach the SecAgg decoders


def test_records_from_bytes_empty_config_value_raises_wire_error() -> None:
    with pytest.raises(wire.WireError):
        wire.records_from_bytes(b'\n\x0c\n\x01c"\x07\n\x05\n\x01k\x12\x00')
