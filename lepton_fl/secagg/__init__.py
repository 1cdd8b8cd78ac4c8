"""SecAgg+ secure aggregation as a pure library (no Flower, no networking).

The coordinator learns only the sum of a round's (clipped, fixed-point encoded) updates;
the protocol survives dropouts.  See docs/secagg-threat-model.md.

Server side: :class:`SecAggServer`; node side: :class:`SecAggNode`; both configured by a
:class:`SecAggConfig` shared by the federation.  One session of
``SecAggConfig.session_rounds`` (R) rounds runs a two-wave setup once (advertise keys,
share keys), then two waves per round (masked input, unmask).  With ``session_rounds=1``
this is the classic four-wave SecAgg+ round with fresh keys.  With
``SecAggConfig.dropout_recovery=False`` a round is one wave (masked input, pair masks only)
and a dropout voids it.
"""

from lepton_fl.secagg.config import RoundParams, SecAggConfig, masking_graph, resolve_round_params
from lepton_fl.secagg.encoding import EncodingStats, flatten, unflatten
from lepton_fl.secagg.errors import ErrorCode, Rejection, RoundVoidedError, SecAggError
from lepton_fl.secagg.identity import NodeIdentity
from lepton_fl.secagg.messages import (
    SETUP,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    Reply,
    Request,
    SessionParams,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    payload_bytes,
    resolve_session_params,
)
from lepton_fl.secagg.node import SecAggNode
from lepton_fl.secagg.server import AggregateResult, SecAggServer

__all__ = [
    "SETUP",
    "AdvertiseKeysReply",
    "AdvertiseKeysRequest",
    "AggregateResult",
    "Binding",
    "EncodingStats",
    "ErrorCode",
    "MaskedInputReply",
    "MaskedInputRequest",
    "NodeIdentity",
    "PublicKeys",
    "Rejection",
    "Reply",
    "Request",
    "RoundParams",
    "RoundVoidedError",
    "SecAggConfig",
    "SecAggError",
    "SecAggNode",
    "SecAggServer",
    "SessionParams",
    "ShareKeysReply",
    "ShareKeysRequest",
    "Stage",
    "UnmaskReply",
    "UnmaskRequest",
    "flatten",
    "masking_graph",
    "payload_bytes",
    "resolve_round_params",
    "resolve_session_params",
    "unflatten",
]
