"""Key schedule of the session variant: keys bound to run, session, round or setup, node ids.

Pairwise and self-mask seeds and commitments reuse :mod:`lepton_fl.secagg.derive` with a
per-round context taken from the session binding (domain-separated from per-round
SecAgg+ contexts by the binding's prefix).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from lepton_fl.secagg.crypto import agree, derive_key
from lepton_fl.secagg.session_messages import SETUP, SessionBinding, SessionStage


def _ids(*ids: int) -> bytes:
    return b"".join(i.to_bytes(8, "big") for i in ids)


def session_round_context(run_id: str, session: int, round: int) -> bytes:
    """Context bytes of the mask seeds and commitments of one round of one session."""
    return SessionBinding(run_id, session, round, SessionStage.MASKED_INPUT).to_bytes()


def setup_share_binding(run_id: str, session: int) -> SessionBinding:
    """The binding under which setup shares are encrypted (setup wave 2)."""
    return SessionBinding(run_id, session, SETUP, SessionStage.SHARE_KEYS)


def session_share_key(
    enc_private: X25519PrivateKey,
    peer_enc_public: bytes,
    *,
    binding: SessionBinding,
    src: int,
    dst: int,
) -> bytes:
    """The AES-GCM key for setup shares sent from ``src`` to ``dst`` (one key per direction)."""
    info = b"lepton-secagg/v1/session-share-key" + binding.to_bytes() + _ids(src, dst)
    return derive_key(agree(enc_private, peer_enc_public), info=info)


def session_share_aad(*, binding: SessionBinding, src: int, dst: int) -> bytes:
    """Associated data of an encrypted setup share: run, session, stage, sender, recipient."""
    return b"lepton-secagg/v1/session-share-aad" + binding.to_bytes() + _ids(src, dst)
