"""The protocol's key schedule: every derived key is bound to run, session, round or setup,
and node ids.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from lepton_fl.secagg.crypto import agree, commit, derive_key
from lepton_fl.secagg.messages import SETUP, Binding, Stage

SECRET_BYTES = 32


def _ids(*ids: int) -> bytes:
    return b"".join(i.to_bytes(8, "big") for i in ids)


def round_context(run_id: str, session: int, round: int) -> bytes:
    """Context bytes of the mask seeds and commitments of one round of one session."""
    return Binding(run_id, session, round, Stage.MASKED_INPUT).to_bytes()


def share_binding(run_id: str, session: int) -> Binding:
    """The binding under which setup shares are encrypted (setup wave 2)."""
    return Binding(run_id, session, SETUP, Stage.SHARE_KEYS)


def share_key(
    enc_private: X25519PrivateKey,
    peer_enc_public: bytes,
    *,
    binding: Binding,
    src: int,
    dst: int,
) -> bytes:
    """The AES-GCM key for setup shares sent from ``src`` to ``dst`` (one key per direction)."""
    info = b"lepton-secagg/v1/session-share-key" + binding.to_bytes() + _ids(src, dst)
    return derive_key(agree(enc_private, peer_enc_public), info=info)


def share_aad(*, binding: Binding, src: int, dst: int) -> bytes:
    """Associated data of an encrypted setup share: run, session, stage, sender, recipient."""
    return b"lepton-secagg/v1/session-share-aad" + binding.to_bytes() + _ids(src, dst)


def pair_seed(
    mask_private: X25519PrivateKey, peer_mask_public: bytes, *, context: bytes, a: int, b: int
) -> bytes:
    """The pairwise mask seed of nodes ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = min(a, b), max(a, b)
    info = b"lepton-secagg/v1/pair-mask" + context + _ids(lo, hi)
    return derive_key(agree(mask_private, peer_mask_public), info=info)


def self_seed(secret: bytes, *, context: bytes, node: int) -> bytes:
    """The self-mask seed of ``node`` from its secret b."""
    return derive_key(secret, info=b"lepton-secagg/v1/self-mask" + context + _ids(node))


def self_commitment(secret: bytes, *, context: bytes, node: int) -> bytes:
    """The commitment to b that lets the server verify a reconstruction."""
    return commit(secret, info=context + _ids(node))


def secret_to_int(secret: bytes) -> int:
    """A 32-byte secret as a field element."""
    return int.from_bytes(secret, "big")


def int_to_secret(value: int) -> bytes | None:
    """A reconstructed field element as a 32-byte secret, or None if it cannot be one."""
    if not 0 <= value < 1 << (8 * SECRET_BYTES):
        return None
    return value.to_bytes(SECRET_BYTES, "big")
