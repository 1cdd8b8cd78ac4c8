"""Typed protocol messages.  Every message carries its binding and its sender or recipient.

Stages run in order: ``advertise_keys`` -> ``share_keys`` -> ``masked_input`` -> ``unmask``.
Requests go from the server to one node (``recipient``), replies from one node
(``sender``) to the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg.config import RoundParams


class Stage(StrEnum):
    """The four protocol stages, in order."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"


@dataclass(frozen=True, slots=True)
class Binding:
    """What a message belongs to: a run, a round of it, and a stage of that round."""

    run_id: str
    round: int
    stage: Stage

    def to_bytes(self) -> bytes:
        """Unambiguous encoding, used as KDF info and AEAD associated data."""
        run = self.run_id.encode()
        stage = self.stage.value.encode()
        return (
            len(run).to_bytes(4, "big")
            + run
            + self.round.to_bytes(8, "big", signed=True)
            + len(stage).to_bytes(1, "big")
            + stage
        )


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A node's two X25519 public keys: ``enc`` (c) for shares, ``mask`` (s) for masks."""

    enc: bytes
    mask: bytes


@dataclass(frozen=True, slots=True)
class AdvertiseKeysRequest:
    """Server -> node: the round's public parameters; asks for fresh public keys."""

    binding: Binding
    recipient: int
    params: RoundParams


@dataclass(frozen=True, slots=True)
class AdvertiseKeysReply:
    """Node -> server: the node's public keys for this round."""

    binding: Binding
    sender: int
    keys: PublicKeys


@dataclass(frozen=True, slots=True)
class ShareKeysRequest:
    """Server -> node: the public keys of every node that advertised them."""

    binding: Binding
    recipient: int
    public_keys: Mapping[int, PublicKeys]


@dataclass(frozen=True, slots=True)
class ShareKeysReply:
    """Node -> server: encrypted shares for each holder, and a commitment to the self-mask seed."""

    binding: Binding
    sender: int
    encrypted_shares: Mapping[int, bytes]
    self_mask_commitment: bytes


@dataclass(frozen=True, slots=True)
class MaskedInputRequest:
    """Server -> node: the encrypted shares addressed to it, keyed by their sender."""

    binding: Binding
    recipient: int
    encrypted_shares: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class MaskedInputReply:
    """Node -> server: the masked, encoded update; senders whose shares it refused."""

    binding: Binding
    sender: int
    masked: NDArray[Any] = field(repr=False)
    rejected_senders: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> node: survivors (reveal self-mask shares) and dropped nodes (mask-key shares)."""

    binding: Binding
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnmaskReply:
    """Node -> server: the shares it holds for the requested nodes."""

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
    """Bytes of payload a reply carries (keys, ciphertexts, shares, vector), without framing."""
    header = 8  # sender id; the binding is part of the transport's envelope
    if isinstance(message, AdvertiseKeysReply):
        return header + len(message.keys.enc) + len(message.keys.mask)
    if isinstance(message, ShareKeysReply):
        cts = sum(8 + len(ct) for ct in message.encrypted_shares.values())
        return header + cts + len(message.self_mask_commitment)
    if isinstance(message, MaskedInputReply):
        return header + int(np.asarray(message.masked).nbytes) + 8 * len(message.rejected_senders)
    shares = list(message.self_mask_shares.values()) + list(message.mask_key_shares.values())
    return header + sum(8 + len(s) for s in shares)
