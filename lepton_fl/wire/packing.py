"""Three objects per message: a Lepton message's records travel as the bytes of one
ConfigRecord.

Flower moves every object of a message (the message, its RecordDict, each record, each array
and each array chunk) in its own request through the SuperLink and the SuperNode, at most two
at a time. A train instruction or reply is 12 to 14 objects. Packed into one array (wire
version 3) it was 5: message, record dict, array record, array and one chunk per 5 MB.
Packed into one ConfigRecord (wire version 4) it is 3 whatever its size: message, record dict
and the record, one bytes value. With 20 nodes on one SuperLink, each object is a request the
SuperLink's one Python process serves, so the two saved per message and direction show in the
round time (bench/round_overhead.py). The packed bytes are the content's own Flower protobuf
(`records_to_bytes`), so nothing is lost or re-encoded by hand.

Packing is the transport's business: the coordinator's `exchange` packs what it sends and
unpacks what comes back, the node's executor unpacks what it receives and packs its reply.
Decoders and handlers see the same RecordDicts as before. The record's ``wire`` value names the
wire version, so a sender of another version (packed or not) is refused with a message saying
which side to upgrade, before any field is read.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from lepton_fl.wire.records import WIRE_VERSION, WireError, records_from_bytes, records_to_bytes

PACKED_RECORD = "lepton"
"""The one record of a packed message."""

_WIRE_KEY = "wire"
_RECORDS_KEY = "records"
_STYPE_PREFIX = "lepton.recorddict.v"
PACKED_STYPE = f"{_STYPE_PREFIX}{WIRE_VERSION}"
"""What the packed record's ``wire`` value says: the records inside follow this wire version."""


class WireVersionError(WireError):
    """A message from a sender that speaks another wire version."""

    code = "wire_version_mismatch"


def pack(records: RecordDict) -> RecordDict:
    """``records`` as one RecordDict holding one ConfigRecord with their protobuf bytes."""
    packed = ConfigRecord({_WIRE_KEY: PACKED_STYPE, _RECORDS_KEY: records_to_bytes(records)})
    return RecordDict({PACKED_RECORD: packed})


def unpack(records: RecordDict) -> RecordDict:
    """The records `pack` packed; a `WireVersionError` for another version's message and a
    `WireError` for anything else that is not a packed Lepton message."""
    record = records.get(PACKED_RECORD)
    if isinstance(record, ArrayRecord):  # wire version 3 packed into one array
        raise _array_packed_sender(record)
    if not isinstance(record, ConfigRecord):
        raise _unpacked_sender(records)
    if len(records) != 1 or sorted(record.keys()) != sorted((_WIRE_KEY, _RECORDS_KEY)):
        raise WireError(
            f"A packed Lepton message holds exactly one record {PACKED_RECORD!r} with the "
            f"values {_WIRE_KEY!r} and {_RECORDS_KEY!r}; this one holds records "
            f"{sorted(records)} and values {sorted(record.keys())}."
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
    return records_from_bytes(data)


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
        f"The message is not a packed Lepton message (no record {PACKED_RECORD!r}; records "
        f"{sorted(records)})."
    )


def _mismatch(version: str) -> WireVersionError:
    return WireVersionError(
        f"The sender speaks Lepton wire version {version}; this build speaks {WIRE_VERSION}. "
        "Coordinator and nodes upgrade together: upgrade the older side."
    )
