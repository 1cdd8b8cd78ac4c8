"""SecAgg+ secure aggregation as a pure library (no Flower, no networking).

The coordinator learns only the sum of a round's (clipped, fixed-point encoded) updates;
the protocol survives dropouts.  See docs/secagg-threat-model.md.

Server side: :class:`SecAggServer`; node side: :class:`SecAggNode`; both configured by a
:class:`SecAggConfig` shared by the federation.  These run four message waves per round
with fresh keys every round.

Per-run setup variant: :class:`SessionServer` / :class:`SessionNode` run a two-wave setup
once per session of ``SecAggConfig.session_rounds`` rounds, then two waves per round
(docs/secagg-threat-model.md, "Per-run setup").
"""

from lepton_fl.secagg.config import RoundParams, SecAggConfig, masking_graph, resolve_round_params
from lepton_fl.secagg.encoding import EncodingStats, flatten, unflatten
from lepton_fl.secagg.errors import ErrorCode, Rejection, SecAggError
from lepton_fl.secagg.messages import (
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    Reply,
    Request,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    payload_bytes,
)
from lepton_fl.secagg.node import SecAggNode
from lepton_fl.secagg.server import AggregateResult, SecAggServer
from lepton_fl.secagg.session_messages import (
    SETUP,
    SessionAdvertiseKeysReply,
    SessionAdvertiseKeysRequest,
    SessionBinding,
    SessionKeys,
    SessionMaskedInputReply,
    SessionMaskedInputRequest,
    SessionParams,
    SessionReply,
    SessionRequest,
    SessionShareKeysReply,
    SessionShareKeysRequest,
    SessionStage,
    SessionUnmaskReply,
    SessionUnmaskRequest,
    resolve_session_params,
    session_payload_bytes,
)
from lepton_fl.secagg.session_node import SessionNode
from lepton_fl.secagg.session_server import SessionRoundResult, SessionServer

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
    "PublicKeys",
    "Rejection",
    "Reply",
    "Request",
    "RoundParams",
    "SecAggConfig",
    "SecAggError",
    "SecAggNode",
    "SecAggServer",
    "SessionAdvertiseKeysReply",
    "SessionAdvertiseKeysRequest",
    "SessionBinding",
    "SessionKeys",
    "SessionMaskedInputReply",
    "SessionMaskedInputRequest",
    "SessionNode",
    "SessionParams",
    "SessionReply",
    "SessionRequest",
    "SessionRoundResult",
    "SessionServer",
    "SessionShareKeysReply",
    "SessionShareKeysRequest",
    "SessionStage",
    "SessionUnmaskReply",
    "SessionUnmaskRequest",
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
    "session_payload_bytes",
    "unflatten",
]
