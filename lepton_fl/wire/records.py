"""Flower records as bytes, and the checks every Lepton message decoder shares."""

from __future__ import annotations

from typing import TypeVar

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

WIRE_VERSION = 4
"""2: train replies carry no loss or evaluation, evaluations are DP releases; 3: every message
travels packed (`lepton_fl.wire.packing`); 4: SecAgg session parameters carry
``dropout-recovery`` (False: one-wave rounds), and each record of a message packs into one
ConfigRecord (2 + records Flower objects, a shared model moved once) instead of the whole
message into one array (five objects, the model moved once per node in a secure wave)."""

T = TypeVar("T")


class WireError(ValueError):
    """A message that does not follow the Lepton wire contract."""

    code = "malformed_message"


def records_to_bytes(records: RecordDict) -> bytes:
    """Serialise a RecordDict with Flower's own protobuf schema."""
    return bytes(recorddict_to_proto(records).SerializeToString())


def records_from_bytes(data: bytes) -> RecordDict:
    """Parse bytes produced by `records_to_bytes`."""
    try:
        return recorddict_from_proto(ProtoRecordDict.FromString(data))
    except (DecodeError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise WireError(f"Could not decode a RecordDict: {err}") from err


def _config(records: RecordDict, name: str) -> ConfigRecord:
    record = records.get(name)
    if not isinstance(record, ConfigRecord):
        raise WireError(f"Record {name!r} is missing or not a ConfigRecord.")
    return record


def _check_version(config: ConfigRecord) -> None:
    version = config.get("wire-version")
    if version != WIRE_VERSION:
        raise WireError(
            f"Wire version {version!r} is not supported (this build speaks {WIRE_VERSION}); "
            "upgrade the older of the coordinator and the node."
        )


def _get(config: ConfigRecord, key: str, kind: type[T]) -> T:
    value = config.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise WireError(f"Field {key!r} is missing or not a {kind.__name__}.")
    return value
