"""Typed SecAgg+ messages.  Every message carries its binding and its sender or recipient.

A session runs two setup waves once (``session_advertise_keys``, ``session_share_keys``)
and then two waves per planned round (``session_masked_input``, ``session_unmask``).
Every message is bound to (run, session, round or ``"setup"``, stage); see
docs/secagg-threat-model.md, "Sessions of several rounds".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg.config import RoundParams, SecAggConfig, resolve_round_params

SETUP: Final = "setup"
SESSION_DOMAIN = b"lepton-secagg/v1/session"
SetupOrRound = int | Literal["setup"]


class Stage(StrEnum):
    """The session's stages: two setup stages (once), two stages per round."""

    ADVERTISE_KEYS = "session_advertise_keys"
    SHARE_KEYS = "session_share_keys"
    MASKED_INPUT = "session_masked_input"
    UNMASK = "session_unmask"

    @property
    def is_setup(self) -> bool:
        """Whether the stage belongs to the once-per-session setup."""
        return self in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS)


@dataclass(frozen=True, slots=True)
class Binding:
    """What a session message belongs to: run, session, round (or ``"setup"``) and stage."""

    run_id: str
    session: int
    round: SetupOrRound
    stage: Stage

    def to_bytes(self) -> bytes:
        """Unambiguous, domain-separated encoding, used as KDF info and AEAD associated data."""
        run = self.run_id.encode()
        stage = self.stage.value.encode()
        if self.round == SETUP:
            when = b"S"
        else:
            when = b"R" + int(self.round).to_bytes(8, "big", signed=True)
        return (
            SESSION_DOMAIN
            + len(run).to_bytes(4, "big")
            + run
            + self.session.to_bytes(8, "big", signed=True)
            + when
            + len(stage).to_bytes(1, "big")
            + stage
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionParams:
    """Public parameters of a session: the round parameters (fixed for the session), R, and
    whether a round can be unmasked after dropouts (False: one-wave rounds, no unmask)."""

    params: RoundParams
    rounds: int
    dropout_recovery: bool = True


def resolve_session_params(
    config: SecAggConfig,
    *,
    participants: Iterable[int],
    vector_length: int,
    graph_seed: bytes,
) -> SessionParams:
    """Derive a session's public parameters; raise :class:`SecAggError` if unsafe.

    The masking graph, threshold and quantization are those of a round over all the
    setup participants; they stay fixed for the whole session (fewer survivors can
    only make the sum smaller, so it still never wraps).
    """
    params = resolve_round_params(
        config, participants=participants, vector_length=vector_length, graph_seed=graph_seed
    )
    return SessionParams(
        params=params, rounds=config.session_rounds, dropout_recovery=config.dropout_recovery
    )


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A node's session public keys: ``enc`` (c) for shares, one mask key (s) per round,
    and the node's signature over them with its enrolled key (empty where the session
    runs without identities; see lepton_fl.secagg.identity)."""

    enc: bytes
    masks: tuple[bytes, ...]
    signature: bytes = b""

    def mask(self, round: int) -> bytes:
        """The mask-agreement public key of round ``round`` (1-based)."""
        if not 1 <= round <= len(self.masks):
            raise ValueError(f"No mask key for round {round}; the session has {len(self.masks)}.")
        return self.masks[round - 1]


@dataclass(frozen=True, slots=True)
class AdvertiseKeysRequest:
    """Setup wave 1, server -> node: the session's parameters; asks for public keys."""

    binding: Binding
    recipient: int
    session_params: SessionParams


@dataclass(frozen=True, slots=True)
class AdvertiseKeysReply:
    """Setup wave 1, node -> server: the node's public keys for the session."""

    binding: Binding
    sender: int
    keys: PublicKeys


@dataclass(frozen=True, slots=True)
class ShareKeysRequest:
    """Setup wave 2, server -> node: the public keys of every node that advertised them."""

    binding: Binding
    recipient: int
    public_keys: Mapping[int, PublicKeys]


@dataclass(frozen=True, slots=True)
class ShareKeysReply:
    """Setup wave 2, node -> server: per holder, encrypted shares for every round; and
    commitments to the node's self-mask seeds b^(1..R)."""

    binding: Binding
    sender: int
    encrypted_shares: Mapping[int, bytes]
    self_mask_commitments: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class MaskedInputRequest:
    """Round wave A, server -> node: the round's active set, the nodes excluded from the
    session so far, and (first round only) the encrypted shares addressed to the node."""

    binding: Binding
    recipient: int
    active: tuple[int, ...]
    excluded: tuple[int, ...]
    encrypted_shares: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class MaskedInputReply:
    """Round wave A, node -> server: the masked, encoded update; (first round only)
    senders whose shares it refused."""

    binding: Binding
    sender: int
    masked: NDArray[Any] = field(repr=False)
    rejected_senders: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Round wave B, server -> node: the round's survivors (reveal b^(r) shares) and its
    dropped nodes (reveal s^(r) shares)."""

    binding: Binding
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnmaskReply:
    """Round wave B, node -> server: the round's shares it holds for the requested nodes."""

    binding: Binding
    sender: int
    self_mask_shares: Mapping[int, bytes]
    mask_key_shares: Mapping[int, bytes]


Request = AdvertiseKeysRequest | ShareKeysRequest | MaskedInputRequest | UnmaskRequest
Reply = AdvertiseKeysReply | ShareKeysReply | MaskedInputReply | UnmaskReply

REPLY_STAGE: dict[type[Any], Stage] = {
    AdvertiseKeysReply: Stage.ADVERTISE_KEYS,
    ShareKeysReply: Stage.SHARE_KEYS,
    MaskedInputReply: Stage.MASKED_INPUT,
    UnmaskReply: Stage.UNMASK,
}


def payload_bytes(message: Reply) -> int:
    """Bytes of payload a session reply carries, without framing (as ``payload_bytes``)."""
    header = 8  # sender id; the binding is part of the transport's envelope
    if isinstance(message, AdvertiseKeysReply):
        keys = message.keys
        return header + len(keys.enc) + sum(len(k) for k in keys.masks) + len(keys.signature)
    if isinstance(message, ShareKeysReply):
        cts = sum(8 + len(ct) for ct in message.encrypted_shares.values())
        return header + cts + sum(len(c) for c in message.self_mask_commitments)
    if isinstance(message, MaskedInputReply):
        return header + int(np.asarray(message.masked).nbytes) + 8 * len(message.rejected_senders)
    shares = list(message.self_mask_shares.values()) + list(message.mask_key_shares.values())
    return header + sum(8 + len(s) for s in shares)
