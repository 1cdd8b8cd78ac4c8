"""One object per message: a Lepton message's records travel as one protobuf-bytes `Array`.

Flower moves every object of a message (the message, its RecordDict, each record, each array
and each array chunk) in its own request through the SuperLink and the SuperNode, at most two
at a time. A train instruction or reply is 12 to 14 objects; packed, it is 5 (message, record
dict, one ArrayRecord, one Array, one chunk for models under Flower's chunk size). The packed
bytes are the content's own Flower protobuf (`records_to_bytes`), so nothing is lost or
re-encoded by hand.

Packing is the transport's business: the coordinator's `exchange` packs what it sends and
unpacks what comes back, the node's executor unpacks what it receives and packs its reply.
Decoders and handlers see the same RecordDicts as before. The array's ``stype`` names the wire
version, so a sender of another version (packed or not) is refused with a message saying
which side to upgrade, before any field is read.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from lepton_fl.wire.records import WIRE_VERSION, WireError, records_from_bytes, records_to_bytes

PACKED_RECORD = "lepton"
"""The one record of a packed message."""

_PACKED_ARRAY = "records"
_STYPE_PREFIX = "lepton.recorddict.v"
PACKED_STYPE = f"{_STYPE_PREFIX}{WIRE_VERSION}"
"""What the packed array's ``stype`` says: the records inside follow this wire version."""


class WireVersionError(WireError):
    """A message from a sender that speaks another wire version."""

    code = "wire_version_mismatch"


def pack(records: RecordDict) -> RecordDict:
    """``records`` as one RecordDict holding one array of their protobuf bytes."""
    data = records_to_bytes(records)
    array = Array(dtype="bytes", shape=(len(data),), stype=PACKED_STYPE, data=data)
    return RecordDict({PACKED_RECORD: ArrayRecord(array_dict={_PACKED_ARRAY: array})})


def unpack(records: RecordDict) -> RecordDict:
    """The records `pack` packed; a `WireVersionError` for another version's message and a
    `WireError` for anything else that is not a packed Lepton message."""
    record = records.get(PACKED_RECORD)
    if not isinstance(record, ArrayRecord):
        raise _unpacked_sender(records)
    if len(records) != 1 or list(record.keys()) != [_PACKED_ARRAY]:
        raise WireError(
            f"A packed Lepton message holds exactly one record {PACKED_RECORD!r} with one array "
            f"{_PACKED_ARRAY!r}; this one holds records {sorted(records)} and arrays "
            f"{sorted(record.keys())}."
        )
    array = record[_PACKED_ARRAY]
    if array.stype != PACKED_STYPE:
        version = array.stype.removeprefix(_STYPE_PREFIX)
        if array.stype.startswith(_STYPE_PREFIX) and version.isdigit():
            raise _mismatch(version)
        raise WireError(f"The packed array's type {array.stype!r} is not {PACKED_STYPE!r}.")
    if array.dtype != "bytes" or tuple(array.shape) != (len(array.data),):
        raise WireError(
            f"The packed array must be {len(array.data)} bytes (dtype 'bytes'), not dtype "
            f"{array.dtype!r} of shape {tuple(array.shape)}."
        )
    return records_from_bytes(array.data)


def _unpacked_sender(records: RecordDict) -> WireError:
    """Why an unpacked message is refused: a sender from before packing (wire version 2 and
    earlier put ``wire-version`` in a ConfigRecord) or no Lepton message at all."""
    for record in records.values():
        if isinstance(record, ConfigRecord) and "wire-version" in record:
            return _mismatch(str(record["wire-version"]))
    return WireError(
        f"The message is not a packed Lepton message (no record {PACKED_RECORD!r}; records "
        f"{sorted(records)})."
    )


def _mismatch(version: str) -> WireVersionError:
    return WireVersionError(
        f"The sender speaks Lepton wire version {version}; this build speaks {WIRE_VERSION}. "
        "Coordinator and nodes upgrade together: upgrade the older side."
    )
