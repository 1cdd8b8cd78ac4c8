"""Packed messages: each record of a Lepton message travels as the bytes of one ConfigRecord.

Flower moves every object of a message (the message, its RecordDict, each record, each array
and each 5 MB array chunk) in its own request through the SuperLink and the SuperNode, at most
two at a time. A train instruction or reply is 12 to 14 objects. Packed (wire version 4), each
record becomes one ConfigRecord holding that record's own Flower protobuf bytes
(`records_to_bytes` of a one-record RecordDict): 2 + the number of records, whatever the
model's size (a train instruction: 4). A node's reply, which no other message shares, is
packed whole into one ConfigRecord: 3 objects. With 20 nodes on one SuperLink, each object is
a request the SuperLink's one Python process serves (bench/round_overhead.py).

Flower names an object by the hash of its content and moves an object that several messages
share once. One record per object keeps that: the model, identical in every node's train
message of a secure round while each node's SecAgg request differs, is pushed and stored once,
not once per node (wire version 3 packed a whole message into one array, so a secure wave
moved the model N times). ``cache`` lets one batch of messages serialise a shared record once.

Packing is the transport's business: the coordinator's `exchange` packs what it sends and
unpacks what comes back, the node's executor unpacks what it receives and packs its reply.
Decoders and handlers see the same RecordDicts as before. Every packed record's ``wire`` value
names the wire version, so a sender of another version (packed or not) is refused with a
message saying which side to upgrade, before any field is read.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from lepton_fl.wire.records import WIRE_VERSION, WireError, records_from_bytes, records_to_bytes

PACKED_PREFIX = "lepton-"
"""Packed record ``x`` travels as record ``lepton-x``."""
PACKED_RECORD = "lepton"
"""The one record of a message packed whole (a ConfigRecord; wire version 3's was an
ArrayRecord, recognised only to name the version)."""

_WIRE_KEY = "wire"
_RECORDS_KEY = "records"
_STYPE_PREFIX = "lepton.recorddict.v"
PACKED_STYPE = f"{_STYPE_PREFIX}{WIRE_VERSION}"
"""What each packed record's ``wire`` value says: its bytes follow this wire version."""


class WireVersionError(WireError):
    """A message from a sender that speaks another wire version."""

    code = "wire_version_mismatch"


PackCache = dict[tuple[int, str], tuple[object, ConfigRecord]]
"""(record identity, name) -> (the record, kept alive so that its identity stays its own;
its packed form)."""


def pack(
    records: RecordDict, *, cache: PackCache | None = None, per_record: bool = True
) -> RecordDict:
    """``records`` with each record packed into one ConfigRecord of its protobuf bytes, or
    (``per_record=False``: a node's reply, which no other message shares) all of them into
    one, ``lepton``: three Flower objects.

    ``cache`` (one per batch of messages sent together) lets a record that several messages of
    the batch carry be serialised once.
    """
    if not records:
        raise WireError("An empty message cannot be packed: a Lepton message has records.")
    if not per_record:
        whole = ConfigRecord({_WIRE_KEY: PACKED_STYPE, _RECORDS_KEY: records_to_bytes(records)})
        return RecordDict({PACKED_RECORD: whole})
    packed = RecordDict()
    for name, record in records.items():
        key = (id(record), name)
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            data = records_to_bytes(RecordDict({name: record}))
            hit = (record, ConfigRecord({_WIRE_KEY: PACKED_STYPE, _RECORDS_KEY: data}))
            if cache is not None:
                cache[key] = hit
        packed[f"{PACKED_PREFIX}{name}"] = hit[1]
    return packed


def unpack(records: RecordDict) -> RecordDict:
    """The records `pack` packed; a `WireVersionError` for another version's message and a
    `WireError` for anything else that is not a packed Lepton message."""
    whole = records.get(PACKED_RECORD)
    if isinstance(whole, ArrayRecord):  # wire version 3 packed into one array
        raise _array_packed_sender(whole)
    if whole is not None:
        if len(records) != 1:
            raise WireError(
                f"A message packed whole holds only the record {PACKED_RECORD!r}, not "
                f"{sorted(records)}."
            )
        return records_from_bytes(_packed_bytes(PACKED_RECORD, whole))
    if not records or not all(n.startswith(PACKED_PREFIX) for n in records):
        raise _unpacked_sender(records)
    out = RecordDict()
    for packed_name, record in records.items():
        name = packed_name.removeprefix(PACKED_PREFIX)
        inner = records_from_bytes(_packed_bytes(packed_name, record))
        if list(inner.keys()) != [name]:
            raise WireError(
                f"The packed record {packed_name!r} must hold exactly one record {name!r}, not "
                f"{sorted(inner.keys())}."
            )
        out[name] = inner[name]
    return out


def _packed_bytes(name: str, record: object) -> bytes:
    """The bytes of one packed record, after its wire version was checked."""
    if not isinstance(record, ConfigRecord) or sorted(record.keys()) != sorted(
        (_WIRE_KEY, _RECORDS_KEY)
    ):
        raise WireError(
            f"A packed Lepton record is a ConfigRecord with exactly the values {_WIRE_KEY!r} and "
            f"{_RECORDS_KEY!r}; {name!r} is not."
        )
    stype = record[_WIRE_KEY]
    if stype != PACKED_STYPE:
        version = str(stype).removeprefix(_STYPE_PREFIX)
        if isinstance(stype, str) and stype.startswith(_STYPE_PREFIX) and version.isdigit():
            raise _mismatch(version)
        raise WireError(f"The packed record's wire type {stype!r} is not {PACKED_STYPE!r}.")
    data = record[_RECORDS_KEY]
    if not isinstance(data, bytes):
        raise WireError(f"The packed record's {_RECORDS_KEY!r} must be bytes, not {type(data)}.")
    return data


def _array_packed_sender(record: ArrayRecord) -> WireError:
    """Why a message packed into one array (wire version 3) is refused."""
    for array in record.values():
        version = array.stype.removeprefix(_STYPE_PREFIX)
        if array.stype.startswith(_STYPE_PREFIX) and version.isdigit():
            return _mismatch(version)
    return WireError(f"The record {PACKED_RECORD!r} is an array record, not a packed message.")


def _unpacked_sender(records: RecordDict) -> WireError:
    """Why an unpacked message is refused: a sender from before packing (wire version 2 and
    earlier put ``wire-version`` in a ConfigRecord) or no Lepton message at all."""
    for record in records.values():
        if isinstance(record, ConfigRecord) and "wire-version" in record:
            return _mismatch(str(record["wire-version"]))
    return WireError(
        f"The message is not a packed Lepton message (its records are not all named "
        f"{PACKED_PREFIX}*: {sorted(records)})."
    )


def _mismatch(version: str) -> WireVersionError:
    return WireVersionError(
        f"The sender speaks Lepton wire version {version}; this build speaks {WIRE_VERSION}. "
        "Coordinator and nodes upgrade together: upgrade the older side."
    )
