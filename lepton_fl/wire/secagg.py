"""SecAgg+ session messages as Flower records (see lepton_fl.secagg for the protocol).

Kept apart from the round messages so that the relay, which Flower starts for every
message, never imports the SecAgg library unless a SecAgg message is being handled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

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
    SessionParams,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from lepton_fl.wire.records import WIRE_VERSION, T, WireError, _check_version, _config, _get

# --- SecAgg+ session messages -------------------------------------------------------------
#
# Layout: one ConfigRecord "secagg" holds `wire-version`, `kind` (the message class name),
# the binding (`run-id` str, `session` int, `round` "setup" or a decimal str, `stage`), the
# `sender` or `recipient` and the payload.  Node ids are canonical decimal strings (Flower
# ids are unsigned 64-bit and do not fit the signed int64 of a ConfigRecord); id tuples are
# `list[str]`; a mapping node id -> bytes is two parallel lists `<name>-ids: list[str]` and
# `<name>-blobs: list[bytes]`; public keys add `<name>-enc: list[bytes]`, the per-node
# mask keys flattened into `<name>-masks: list[bytes]` with `<name>-mask-counts: list[int]`,
# and each node's signature over its keys in `<name>-signatures: list[bytes]` (the
# advertisement itself carries `enc-key`, `mask-keys` and `keys-signature`).
# The masked vector travels alone in ArrayRecord "secagg.masked" under key "masked".

_SECAGG = "secagg"
_SECAGG_MASKED = "secagg.masked"
_MASKED_KEY = "masked"
_NODE_ID_LIMIT = 2**64
_ROUND_LIMIT = 2**63
_NodeIdField = Literal["sender", "recipient"]

_REQUEST_KINDS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (AdvertiseKeysRequest, ShareKeysRequest, MaskedInputRequest, UnmaskRequest)
}
_REPLY_KINDS: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (AdvertiseKeysReply, ShareKeysReply, MaskedInputReply, UnmaskReply)
}


def secagg_request_to_records(request: Request) -> RecordDict:
    """Encode a SecAgg+ request (server -> node) as a Flower RecordDict."""
    config = _secagg_header(request, request.binding, "recipient", request.recipient)
    if isinstance(request, AdvertiseKeysRequest):
        _put_session_params(config, request.session_params)
    elif isinstance(request, ShareKeysRequest):
        _put_public_keys(config, "public-keys", request.public_keys)
    elif isinstance(request, MaskedInputRequest):
        config["active"] = _id_list(request.active)
        config["excluded"] = _id_list(request.excluded)
        _put_blobs(config, "encrypted-shares", request.encrypted_shares)
    elif isinstance(request, UnmaskRequest):
        config["survivors"] = _id_list(request.survivors)
        config["dropped"] = _id_list(request.dropped)
    else:
        raise WireError(f"Cannot encode {type(request).__name__!r} as a SecAgg request.")
    return RecordDict({_SECAGG: config})


def secagg_request_from_records(records: RecordDict) -> Request:
    """Decode and validate a SecAgg+ request; anything malformed raises WireError."""
    return _secagg_decode(records, "request", _REQUEST_KINDS, _request_from)


def secagg_reply_to_records(reply: Reply) -> RecordDict:
    """Encode a SecAgg+ reply (node -> server) as a Flower RecordDict."""
    config = _secagg_header(reply, reply.binding, "sender", reply.sender)
    records = RecordDict()
    if isinstance(reply, AdvertiseKeysReply):
        config["enc-key"] = bytes(reply.keys.enc)
        config["mask-keys"] = [bytes(k) for k in reply.keys.masks]
        config["keys-signature"] = bytes(reply.keys.signature)
    elif isinstance(reply, ShareKeysReply):
        _put_blobs(config, "encrypted-shares", reply.encrypted_shares)
        config["self-mask-commitments"] = [bytes(c) for c in reply.self_mask_commitments]
    elif isinstance(reply, MaskedInputReply):
        config["rejected-senders"] = _id_list(reply.rejected_senders)
        masked = np.asarray(reply.masked)
        if not np.issubdtype(masked.dtype, np.integer):
            raise WireError(f"The masked vector must have an integer dtype, not {masked.dtype}.")
        records[_SECAGG_MASKED] = ArrayRecord({_MASKED_KEY: Array.from_numpy_ndarray(masked)})
    elif isinstance(reply, UnmaskReply):
        _put_blobs(config, "self-mask-shares", reply.self_mask_shares)
        _put_blobs(config, "mask-key-shares", reply.mask_key_shares)
    else:
        raise WireError(f"Cannot encode {type(reply).__name__!r} as a SecAgg reply.")
    records[_SECAGG] = config
    return records


def secagg_reply_from_records(records: RecordDict) -> Reply:
    """Decode and validate a SecAgg+ reply; anything malformed raises WireError."""
    return _secagg_decode(records, "reply", _REPLY_KINDS, _reply_from)


def _secagg_decode(
    records: RecordDict,
    what: str,
    kinds: Mapping[str, type[Any]],
    decode: Callable[[RecordDict, ConfigRecord, str], T],
) -> T:
    try:
        config = _config(records, _SECAGG)
        _check_version(config)
        kind = _get(config, "kind", str)
        if kind not in kinds:
            raise WireError(
                f"Unknown SecAgg {what} kind {kind!r}; expected one of {', '.join(kinds)}."
            )
        return decode(records, config, kind)
    except WireError:
        raise
    except Exception as err:  # garbage must never escape as anything but a WireError
        raise WireError(f"Could not decode a SecAgg {what}: {err!r}.") from err


def _request_from(records: RecordDict, config: ConfigRecord, kind: str) -> Request:
    binding = _binding_from(config)
    recipient = _node_id(config, "recipient")
    if kind == AdvertiseKeysRequest.__name__:
        return AdvertiseKeysRequest(
            binding=binding, recipient=recipient, session_params=_session_params_from(config)
        )
    if kind == ShareKeysRequest.__name__:
        return ShareKeysRequest(
            binding=binding,
            recipient=recipient,
            public_keys=_public_keys_from(config, "public-keys"),
        )
    if kind == MaskedInputRequest.__name__:
        return MaskedInputRequest(
            binding=binding,
            recipient=recipient,
            active=tuple(_node_ids(config, "active")),
            excluded=tuple(_node_ids(config, "excluded")),
            encrypted_shares=_blobs_from(config, "encrypted-shares"),
        )
    return UnmaskRequest(
        binding=binding,
        recipient=recipient,
        survivors=tuple(_node_ids(config, "survivors")),
        dropped=tuple(_node_ids(config, "dropped")),
    )


def _reply_from(records: RecordDict, config: ConfigRecord, kind: str) -> Reply:
    binding = _binding_from(config)
    sender = _node_id(config, "sender")
    if kind == AdvertiseKeysReply.__name__:
        keys = PublicKeys(
            enc=_get(config, "enc-key", bytes),
            masks=tuple(_typed_list(config, "mask-keys", bytes)),
            signature=_get(config, "keys-signature", bytes),
        )
        return AdvertiseKeysReply(binding=binding, sender=sender, keys=keys)
    if kind == ShareKeysReply.__name__:
        return ShareKeysReply(
            binding=binding,
            sender=sender,
            encrypted_shares=_blobs_from(config, "encrypted-shares"),
            self_mask_commitments=tuple(_typed_list(config, "self-mask-commitments", bytes)),
        )
    if kind == MaskedInputReply.__name__:
        return MaskedInputReply(
            binding=binding,
            sender=sender,
            masked=_masked_from(records),
            rejected_senders=tuple(_node_ids(config, "rejected-senders")),
        )
    return UnmaskReply(
        binding=binding,
        sender=sender,
        self_mask_shares=_blobs_from(config, "self-mask-shares"),
        mask_key_shares=_blobs_from(config, "mask-key-shares"),
    )


def _secagg_header(
    message: object, binding: Binding, role: _NodeIdField, node_id: int
) -> ConfigRecord:
    round_text = SETUP if binding.round == SETUP else str(int(binding.round))
    return ConfigRecord(
        {
            "wire-version": WIRE_VERSION,
            "kind": type(message).__name__,
            "run-id": binding.run_id,
            "session": int(binding.session),
            "round": round_text,
            "stage": Stage(binding.stage).value,
            role: _id_text(node_id),
        }
    )


def _binding_from(config: ConfigRecord) -> Binding:
    session = _int(config, "session")
    round_text = _get(config, "round", str)
    when: int | Literal["setup"] = (
        SETUP if round_text == SETUP else _decimal(round_text, "round", _ROUND_LIMIT)
    )
    stage_text = _get(config, "stage", str)
    try:
        stage = Stage(stage_text)
    except ValueError:
        raise WireError(
            f"Field 'stage' holds {stage_text!r}, which is not a SecAgg stage."
        ) from None
    return Binding(run_id=_get(config, "run-id", str), session=session, round=when, stage=stage)


def _put_session_params(config: ConfigRecord, session: SessionParams) -> None:
    params = session.params
    config["session-rounds"] = int(session.rounds)
    config["dropout-recovery"] = bool(session.dropout_recovery)
    config["participants"] = _id_list(params.participants)
    config["neighbours"] = int(params.neighbours)
    config["threshold"] = int(params.threshold)
    config["clipping-range"] = float(params.clipping_range)
    config["modulus-bits"] = int(params.modulus_bits)
    config["levels"] = int(params.levels)
    config["vector-length"] = int(params.vector_length)
    config["graph-seed"] = bytes(params.graph_seed)
    config["min-participants"] = int(params.min_participants)


def _session_params_from(config: ConfigRecord) -> SessionParams:
    params = RoundParams(
        participants=tuple(_node_ids(config, "participants")),
        neighbours=_int(config, "neighbours"),
        threshold=_int(config, "threshold"),
        clipping_range=_get(config, "clipping-range", float),
        modulus_bits=_int(config, "modulus-bits"),
        levels=_int(config, "levels"),
        vector_length=_int(config, "vector-length"),
        graph_seed=_get(config, "graph-seed", bytes),
        min_participants=_int(config, "min-participants"),
    )
    return SessionParams(
        params=params,
        rounds=_int(config, "session-rounds"),
        dropout_recovery=_get(config, "dropout-recovery", bool),
    )


def _put_blobs(config: ConfigRecord, name: str, blobs: Mapping[int, bytes]) -> None:
    config[f"{name}-ids"] = _id_list(blobs)
    config[f"{name}-blobs"] = [bytes(blob) for blob in blobs.values()]


def _blobs_from(config: ConfigRecord, name: str) -> dict[int, bytes]:
    ids = _unique_ids(config, f"{name}-ids")
    blobs = _typed_list(config, f"{name}-blobs", bytes)
    _same_length(f"{name}-ids", ids, f"{name}-blobs", blobs)
    return dict(zip(ids, blobs, strict=True))


def _put_public_keys(config: ConfigRecord, name: str, keys: Mapping[int, PublicKeys]) -> None:
    config[f"{name}-ids"] = _id_list(keys)
    config[f"{name}-enc"] = [bytes(k.enc) for k in keys.values()]
    config[f"{name}-mask-counts"] = [len(k.masks) for k in keys.values()]
    config[f"{name}-masks"] = [bytes(m) for k in keys.values() for m in k.masks]
    config[f"{name}-signatures"] = [bytes(k.signature) for k in keys.values()]


def _public_keys_from(config: ConfigRecord, name: str) -> dict[int, PublicKeys]:
    ids = _unique_ids(config, f"{name}-ids")
    encs = _typed_list(config, f"{name}-enc", bytes)
    counts = _typed_list(config, f"{name}-mask-counts", int)
    masks = _typed_list(config, f"{name}-masks", bytes)
    signatures = _typed_list(config, f"{name}-signatures", bytes)
    _same_length(f"{name}-ids", ids, f"{name}-enc", encs)
    _same_length(f"{name}-ids", ids, f"{name}-signatures", signatures)
    _same_length(f"{name}-ids", ids, f"{name}-mask-counts", counts)
    if any(c < 0 for c in counts) or sum(counts) != len(masks):
        raise WireError(
            f"Field '{name}-mask-counts' does not add up to the {len(masks)} entries of "
            f"'{name}-masks' (or holds a negative count)."
        )
    out: dict[int, PublicKeys] = {}
    start = 0
    for node, enc, count, signature in zip(ids, encs, counts, signatures, strict=True):
        out[node] = PublicKeys(
            enc=enc, masks=tuple(masks[start : start + count]), signature=signature
        )
        start += count
    return out


def _masked_from(records: RecordDict) -> np.ndarray:
    record = records.get(_SECAGG_MASKED)
    if not isinstance(record, ArrayRecord):
        raise WireError(f"Record {_SECAGG_MASKED!r} is missing or not an ArrayRecord.")
    if list(record.keys()) != [_MASKED_KEY]:
        raise WireError(
            f"Record {_SECAGG_MASKED!r} must hold exactly one array named {_MASKED_KEY!r}."
        )
    array = record[_MASKED_KEY]
    try:
        vector = array.numpy()
    except Exception as err:
        raise WireError(f"The masked vector could not be decoded: {err!r}.") from err
    if not np.issubdtype(vector.dtype, np.integer):
        raise WireError(f"The masked vector must have an integer dtype, not {vector.dtype}.")
    if str(vector.dtype) != array.dtype or list(vector.shape) != list(array.shape):
        raise WireError("The masked vector's data does not match its declared dtype and shape.")
    return vector


def _id_text(node_id: int) -> str:
    value = int(node_id)
    if not 0 <= value < _NODE_ID_LIMIT:
        raise WireError(f"Node id {value} is outside [0, 2**64) and cannot be encoded.")
    return str(value)


def _id_list(ids: Iterable[int]) -> list[str]:
    return [_id_text(node) for node in ids]


def _decimal(text: str, key: str, limit: int) -> int:
    if len(text) > len(str(limit)) or not re.fullmatch(r"0|[1-9][0-9]*", text):
        raise WireError(f"Field {key!r} holds {text[:40]!r}, which is not a canonical decimal.")
    value = int(text)
    if value >= limit:
        raise WireError(f"Field {key!r} holds {value}, which is outside [0, {limit}).")
    return value


def _node_id(config: ConfigRecord, key: str) -> int:
    return _decimal(_get(config, key, str), key, _NODE_ID_LIMIT)


def _node_ids(config: ConfigRecord, key: str) -> list[int]:
    return [_decimal(text, key, _NODE_ID_LIMIT) for text in _typed_list(config, key, str)]


def _unique_ids(config: ConfigRecord, key: str) -> list[int]:
    ids = _node_ids(config, key)
    if len(set(ids)) != len(ids):
        raise WireError(f"Field {key!r} lists the same node id more than once.")
    return ids


def _int(config: ConfigRecord, key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"Field {key!r} is missing or not an int.")
    return value


def _typed_list(config: ConfigRecord, key: str, kind: type[T]) -> list[T]:
    value = config.get(key)
    if not isinstance(value, list):
        raise WireError(f"Field {key!r} is missing or not a list.")
    out: list[T] = []
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool) != (kind is bool):
            raise WireError(f"Field {key!r} must be a list of {kind.__name__}.")
        out.append(item)
    return out


def _same_length(key_a: str, a: Sequence[object], key_b: str, b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise WireError(
            f"Fields {key_a!r} and {key_b!r} must have the same length, not {len(a)} and {len(b)}."
        )


# --- FedAvg over SecAgg+: the public numbers around the masked vectors ---------------------

_FEDAVG = "lepton.fedavg"


def put_round_weighting(records: RecordDict, *, size_bound: int, update_scale: float) -> None:
    """Wave A, server -> node: the round's public size bound n_max and update scale."""
    records[_FEDAVG] = ConfigRecord(
        {"size-bound": int(size_bound), "update-scale": float(update_scale)}
    )


def round_weighting_from(records: RecordDict) -> tuple[int, float]:
    """Decode and check ``(size_bound, update_scale)``."""
    config = _config(records, _FEDAVG)
    bound = _get(config, "size-bound", int)
    scale = _get(config, "update-scale", float)
    if bound < 1 or not (np.isfinite(scale) and scale > 0):
        raise WireError(
            f"Bad round weighting: size bound {bound} and update scale {scale} must be positive."
        )
    return bound, scale


def put_size_bucket(records: RecordDict, bucket: int) -> None:
    """Setup wave 1, node -> server: the node's size bucket (a power of two >= its
    training-set size); its exact size travels only inside the masked vector."""
    records[_FEDAVG] = ConfigRecord({"size-bucket": int(bucket)})


def size_bucket_from(records: RecordDict) -> int:
    """Decode a node's advertised size bucket: a power of two."""
    value = _get(_config(records, _FEDAVG), "size-bucket", int)
    if value < 1 or value & (value - 1):
        raise WireError(f"A node advertised size bucket {value}; it must be a power of two.")
    return value


def is_secagg(records: RecordDict) -> bool:
    """Whether a message carries a SecAgg+ request or reply."""
    return _SECAGG in records
