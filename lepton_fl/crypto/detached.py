"""Detached Ed25519 signatures over canonical JSON, with domain separation.

The coordinator's key signs several kinds of document (releases, run authorizations, audit
checkpoints, privacy reports). Each kind here has its own *domain*, a format name such as
``lepton-audit-checkpoint/1``: the signature covers ``domain + b"\\x00"`` followed by the
canonical JSON of the document, so a signature made for one kind never verifies as another
(a release signature covers the canonical JSON alone, which starts with ``{``).

A detached signature is a small JSON object kept beside the document::

    {"algorithm": "ed25519", "domain": "lepton-privacy-report/1",
     "public_key_fingerprint": "sha256:<hex of the raw public key>",
     "value": "<base64 of the 64-byte signature>"}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lepton_fl.crypto.release import (
    ReleaseError,
    canonical_json,
    public_key_fingerprint,
    public_key_pem,
)

ALGORITHM: Final = "ed25519"
_SIGNATURE_BYTES: Final = 64


class SignatureError(Exception):
    """A detached signature does not verify; ``code`` is stable, the message says why.

    Codes: ``signature-malformed``, ``signature-wrong-domain``, ``signature-foreign-key``,
    ``signature-mismatch``, ``signature-bad-public-key``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _payload(domain: str, document: Mapping[str, Any]) -> bytes:
    return domain.encode("ascii") + b"\x00" + canonical_json(document)


def sign_detached(
    domain: str, document: Mapping[str, Any], key: Ed25519PrivateKey
) -> dict[str, str]:
    """Sign ``document`` (a JSON object) for ``domain`` with the coordinator's key."""
    return {
        "algorithm": ALGORITHM,
        "domain": domain,
        "public_key_fingerprint": public_key_fingerprint(public_key_pem(key)),
        "value": base64.b64encode(key.sign(_payload(domain, document))).decode("ascii"),
    }


def load_public_key(pem: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key PEM, or raise ``signature-bad-public-key``."""
    try:
        public_key_fingerprint(pem)
    except ReleaseError as err:
        raise SignatureError("signature-bad-public-key", err.message) from err
    key = serialization.load_pem_public_key(pem.encode("utf-8"))
    assert isinstance(key, Ed25519PublicKey)
    return key


def verify_detached(
    domain: str, document: Mapping[str, Any], signature: object, public_key: str
) -> None:
    """Return if ``signature`` is ``public_key``'s signature of ``document`` for ``domain``.

    ``public_key`` is the PEM the verifier trusts (received out of band); the fingerprint
    in the signature only makes a wrong-key error readable.
    """
    key = load_public_key(public_key)
    if not isinstance(signature, Mapping) or signature.get("algorithm") != ALGORITHM:
        raise SignatureError(
            "signature-malformed",
            f'the signature must be an object with "algorithm": "{ALGORITHM}"',
        )
    if signature.get("domain") != domain:
        raise SignatureError(
            "signature-wrong-domain",
            f"the signature is for {signature.get('domain')!r}, not for {domain!r}: it was "
            "made for another kind of document",
        )
    value = signature.get("value")
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _SIGNATURE_BYTES:
        raise SignatureError(
            "signature-malformed", f"the signature value must be base64 of {_SIGNATURE_BYTES} bytes"
        )
    trusted = public_key_fingerprint(public_key)
    signer = signature.get("public_key_fingerprint")
    if signer != trusted:
        raise SignatureError(
            "signature-foreign-key",
            f"signed by key {signer}, but the trusted coordinator key is {trusted}",
        )
    try:
        key.verify(raw, _payload(domain, document))
    except (InvalidSignature, ReleaseError) as err:
        raise SignatureError(
            "signature-mismatch",
            f"the document does not match its signature by {trusted}: it was altered after "
            "it was signed",
        ) from err
