"""Packed messages: one ConfigRecord per record, a model shared by several messages moved
once, and a clear refusal for another wire version.

What Flower moves is counted with Flower's own object walk (`get_all_nested_objects`, what
`push_message` pushes one request per object); the executor's refusals run through the real
`NodeExecutor._answer` with a handler that records whether the trainer was reached.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.error import Error
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from client_node.executor import NodeExecutor
from coordinator.fl.messaging import NodeFailure, read_reply
from coordinator.superlink import fab_directory
from lepton_fl import wire
from lepton_fl.config import FederationSpec, PrivacySpec
from lepton_fl.wire.packing import PACKED_RECORD, PACKED_STYPE, PackCache

SPEC = FederationSpec(name="heart", task="heart_disease", privacy=PrivacySpec(target_epsilon=1))


@pytest.fixture(autouse=True)
def _inside_a_serverapp_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the running task's run (as in the ServerApp process)."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


_RNG = np.random.default_rng(0)
WEIGHTS = [  # the heart-disease MLP's four tensors (distinct values: Flower dedupes chunks)
    _RNG.normal(size=shape).astype(np.float32) for shape in ((13, 32), (32,), (32, 2), (2,))
]


def _instruction() -> RecordDict:
    return wire.instruction_to_records(wire.RoundInstruction(SPEC, 2, WEIGHTS))


def _objects(content: RecordDict) -> int:
    message = Message(content, dst_node_id=7, message_type="train")
    return len(get_all_nested_objects(message))


def test_a_packed_instruction_unpacks_to_the_same_records() -> None:
    got = wire.instruction_from_records(wire.unpack(wire.pack(_instruction())))

    assert got.federation == SPEC
    assert got.round == 2
    assert all(np.array_equal(a, b) for a, b in zip(got.weights, WEIGHTS, strict=True))


def test_packing_cuts_the_objects_flower_moves_per_message() -> None:
    plain, packed = _objects(_instruction()), _objects(wire.pack(_instruction()))

    # plain: message, record dict, array record, config record, 4 arrays, 4 chunks;
    # packed: message, record dict, one config record per record (2)
    assert (plain, packed) == (12, 4)


def test_a_reply_packed_whole_is_three_objects_and_unpacks_the_same() -> None:
    packed = wire.pack(_instruction(), per_record=False)
    assert _objects(packed) == 3
    got = wire.instruction_from_records(wire.unpack(packed))
    assert all(np.array_equal(a, b) for a, b in zip(got.weights, WEIGHTS, strict=True))
    mixed = wire.pack(_instruction())
    mixed[PACKED_RECORD] = packed[PACKED_RECORD]
    with pytest.raises(wire.WireError, match="packed whole holds only"):
        wire.unpack(mixed)


def test_a_large_model_still_travels_as_one_object() -> None:
    """Flower cuts an array into 5 MB chunks, one object each; a packed message does not grow
    in objects with the model (a MiniLM top layer is 7.7 MB)."""
    big = [np.arange(3_000_000, dtype=np.float32)]  # 12 MB
    content = wire.instruction_to_records(wire.RoundInstruction(SPEC, 2, big))
    assert _objects(content) > 5
    assert _objects(wire.pack(content)) == 4
    got = wire.instruction_from_records(wire.unpack(wire.pack(content)))
    assert np.array_equal(got.weights[0], big[0])


def _object_ids(content: RecordDict, node_id: int) -> set[str]:
    message = Message(content, dst_node_id=node_id, message_type="train")
    return set(get_all_nested_objects(message))


def test_a_model_every_node_is_sent_is_one_object_across_their_messages() -> None:
    """A secure wave sends each node the same model beside its own SecAgg request: Flower
    names objects by their content and moves a shared one once, so the packed model must be
    the same object in every node's message (wire version 3 packed each whole message into
    one array: the model went up once per node)."""
    base = _instruction()
    cache: PackCache = {}
    messages = {}
    for node in (7, 8, 9):
        content = RecordDict(dict(base.items()))
        content["secagg"] = ConfigRecord({"recipient": node})
        messages[node] = _object_ids(wire.pack(content, cache=cache), node)
    shared = set.intersection(*messages.values())
    model = wire.pack(RecordDict({"arrays": base["arrays"]}))["lepton-arrays"]
    assert model.object_id in shared
    assert all(len(ids - shared) == 3 for ids in messages.values())  # message, dict, request
    assert len(cache) == 2 + 3  # the shared arrays and config once, and each node's request
    # without the cache the bytes are the same, so the objects are too
    alone = _object_ids(wire.pack(RecordDict(dict(base.items()))), 7)
    assert model.object_id in alone


def _old_sender() -> RecordDict:
    """What a wire-version-2 coordinator or node sends: its records, unpacked."""
    records = _instruction()
    records["config"]["wire-version"] = 2
    return records


def _packed_as(stype: str) -> RecordDict:
    packed = wire.pack(_instruction())
    packed["lepton-config"]["wire"] = stype
    return packed


def _packed_in_an_array(stype: str = "lepton.recorddict.v3") -> RecordDict:
    """What a wire-version-3 coordinator or node sends: its records packed into one array."""
    data = wire.records_to_bytes(_instruction())
    array = Array(dtype="bytes", shape=(len(data),), stype=stype, data=data)
    return RecordDict({PACKED_RECORD: ArrayRecord(array_dict={"records": array})})


@pytest.mark.parametrize(
    ("records", "version"),
    [
        (_old_sender(), "2"),
        (_packed_in_an_array(), "3"),
        (_packed_as(f"lepton.recorddict.v{wire.WIRE_VERSION + 1}"), str(wire.WIRE_VERSION + 1)),
    ],
    ids=["unpacked-v2", "array-packed-v3", "packed-newer"],
)
def test_another_wire_version_is_refused_naming_both(records: RecordDict, version: str) -> None:
    with pytest.raises(wire.WireVersionError) as refused:
        wire.unpack(records)

    assert refused.value.code == "wire_version_mismatch"
    assert f"version {version};" in str(refused.value)
    assert f"speaks {wire.WIRE_VERSION}" in str(refused.value)
    assert "upgrade the older side" in str(refused.value)


def _with_extra_record() -> RecordDict:
    packed = wire.pack(_instruction())
    packed["smuggled"] = ConfigRecord({"x": 1})
    return packed


def _with_bad_bytes() -> RecordDict:
    return RecordDict(
        {"lepton-x": ConfigRecord({"wire": PACKED_STYPE, "records": b"\xff\x00garbage"})}
    )


def _with_text_for_bytes() -> RecordDict:
    return RecordDict({"lepton-x": ConfigRecord({"wire": PACKED_STYPE, "records": "text"})})


def _with_extra_value() -> RecordDict:
    packed = wire.pack(_instruction())
    packed["lepton-config"]["smuggled"] = 1
    return packed


def _renamed() -> RecordDict:
    """A packed record whose bytes hold another record than its name says."""
    packed = wire.pack(_instruction())
    packed["lepton-weights"] = packed.pop("lepton-arrays")
    return packed


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (RecordDict(), "not a packed Lepton message"),
        (_with_extra_record(), "not a packed Lepton message"),
        (_with_extra_value(), "exactly the values"),
        (_renamed(), "exactly one record 'weights'"),
        (_packed_as("numpy.ndarray"), "is not 'lepton.recorddict"),
        (_packed_in_an_array("numpy.ndarray"), "array record, not a packed message"),
        (_with_bad_bytes(), "Could not decode"),
        (_with_text_for_bytes(), "must be bytes"),
    ],
    ids=[
        "empty",
        "extra-record",
        "extra-value",
        "renamed",
        "foreign-stype",
        "foreign-array",
        "garbage",
        "text-not-bytes",
    ],
)
def test_what_is_not_a_packed_message_is_a_wire_error(records: RecordDict, why: str) -> None:
    with pytest.raises(wire.WireError, match=why) as refused:
        wire.unpack(records)

    assert refused.value.code == "malformed_message"


# -- at the transport ends: the node's executor and the coordinator's exchange ---------------


def _executor(seen: list[RecordDict]) -> NodeExecutor:
    def handler(envelope: wire.Envelope, records: RecordDict) -> RecordDict:
        seen.append(records)
        return RecordDict({"config": ConfigRecord({"answered": envelope.kind})})

    return NodeExecutor(handler, "127.0.0.1:1", auth_secret=None)


def _our_fab() -> bytes:
    return build_fab_from_disk(fab_directory())


def _task(content: RecordDict) -> tuple[Message, Context]:
    message = Message(content, dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return message, context


def test_the_executor_hands_the_trainer_unpacked_records_and_packs_its_reply() -> None:
    seen: list[RecordDict] = []
    message, context = _task(wire.pack(_instruction()))

    reply, status, _ = _executor(seen)._answer(message, context, _our_fab())

    assert status == SubStatus.COMPLETED
    assert [wire.instruction_from_records(r).round for r in seen] == [2]
    assert wire.unpack(reply.content)["config"]["answered"] == "train"


@pytest.mark.parametrize("content", [_old_sender(), RecordDict()], ids=["v2", "empty"])
def test_the_executor_refuses_an_unpacked_message_before_the_trainer(
    content: RecordDict,
) -> None:
    seen: list[RecordDict] = []
    message, context = _task(content)

    reply, status, details = _executor(seen)._answer(message, context, _our_fab())

    assert seen == []
    assert status == SubStatus.FAILED
    assert reply.has_error()
    assert details == reply.error.reason
    assert "Lepton" in details


def test_the_coordinator_reads_an_old_nodes_reply_as_a_named_failure() -> None:
    request = Message(wire.pack(_instruction()), dst_node_id=7, message_type="train")
    old_reply = Message(_old_sender(), reply_to=request)

    failure = read_reply(old_reply)

    assert isinstance(failure, NodeFailure)
    assert failure.code == "wire_version_mismatch"
    assert "upgrade the older side" in failure.reason


def test_a_reply_whose_objects_never_arrived_counts_as_no_reply() -> None:
    # A node that dies between pushing its reply and its objects: Flower answers
    # MESSAGE_UNAVAILABLE once the ServerApp's bounded pull gives up; the node dropped.
    request = Message(wire.pack(_instruction()), dst_node_id=7, message_type="train")
    unavailable = Message(
        Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="objects unavailable"), reply_to=request
    )
    failed = Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=request
    )

    assert read_reply(unavailable) is None
    assert read_reply(failed) == NodeFailure("clientapp_error", "boom")
