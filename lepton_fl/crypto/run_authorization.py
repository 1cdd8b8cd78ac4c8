"""Signed run authorizations: nodes work only for runs the admin service started.

The admin service (the holder of the coordinator's Ed25519 key) signs, for every run it
starts, which federation spec the run executes (its SHA-256 digest) and which Flower nodes
take part. The ServerApp forwards the signed text with every message it sends to a node; the
node's trainer verifies it against the key its institution pinned before any key exchange,
training or evaluation. A run submitted around the admin service (``flwr run`` by hand on
the coordinator host) carries no valid authorization, and every node refuses it.

The text travelling on the wire::

    {"authorization": {"format": "lepton-run-authorization/1", "admin_run_id": ...,
                       "federation": <name>, "federation_digest": <sha256 hex>,
                       "members": [{"name": ..., "node_id": ...}, ...],
                       "issued_at": <ISO-8601 UTC>},
     "signature": {"algorithm": "ed25519",
                   "public_key_fingerprint": "sha256:<hex of the raw public key>",
                   "value": "<base64 of the 64-byte signature>"}}

The key is the one that signs releases (``lepton_fl.crypto.release``), with strict domain
separation: the signature covers ``b"lepton-run-authorization/1\\x00"`` followed by the
canonical JSON of the authorization, while a release signature covers the canonical JSON of
a manifest alone (which starts with ``{``). No release signature verifies as an
authorization, and no authorization signature verifies as a release.

Replays (the same signed authorization under a second Flower run) are refused by the node,
which binds each admin run id to the first Flower run id that presented it
(``client_node.ledger.Ledger.bind_run``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton_fl.config import Member, RunSpec, describe_validation_error
from lepton_fl.crypto.release import (
    ReleaseError,
    canonical_json,
    public_key_fingerprint,
    public_key_pem,
)

__all__ = [
    "AUTHORIZATION_FORMAT",
    "RunAuthorization",
    "RunAuthorizationError",
    "authorize_run",
    "authorization_digest",
    "load_pinned_key",
    "sign_run_authorization",
    "verify_run_authorization",
]

AUTHORIZATION_FORMAT: Final = "lepton-run-authorization/1"
_DOMAIN: Final = AUTHORIZATION_FORMAT.encode("ascii") + b"\x00"
_ALGORITHM: Final = "ed25519"
_SIGNATURE_BYTES: Final = 64
_ASK_ADMIN: Final = (
    "Start runs through the coordinator's admin service (POST /federations/{id}/runs); a run "
    "submitted to the SuperLink any other way is refused by every node."
)


class RunAuthorizationError(Exception):
    """A run's authorization is missing or does not hold; ``str(error)`` says what to do.

    ``code`` is stable for programs: ``run_unsigned``, ``run_malformed_authorization``,
    ``run_foreign_key``, ``run_bad_signature``, ``run_spec_mismatch``, ``run_not_member``,
    ``run_bad_pinned_key``, ``run_no_pinned_key``; the node adds ``run_replayed``.
    """

    def __init__(self, code: str, message: str) -> None:
        """Create an error with a machine-readable ``code`` and a human ``message``."""
        super().__init__(message)
        self.code = code
        self.message = message


class RunAuthorization(BaseModel):
    """What the admin service signed for one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["lepton-run-authorization/1"] = AUTHORIZATION_FORMAT
    admin_run_id: Annotated[str, Field(min_length=1, max_length=128)]
    federation: str
    federation_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    members: tuple[Member, ...] = Field(min_length=1)
    issued_at: str
    # the audit log's newest signed checkpoint when the run started (None: empty log); the
    # node verifies and keeps it (`client_node.checkpoints`)
    audit_checkpoint: dict[str, Any] | None = None

    def member(self, node_id: int) -> Member | None:
        """The member with Flower node id ``node_id``, or None."""
        return next((m for m in self.members if m.node_id == node_id), None)


# --------------------------------------------------------------------------- signing


def sign_run_authorization(authorization: RunAuthorization, key: Ed25519PrivateKey) -> str:
    """Sign ``authorization`` with the coordinator's key; return the signed JSON text."""
    body = authorization.model_dump(mode="json")
    signature = key.sign(_DOMAIN + canonical_json(body))
    signed = {
        "authorization": body,
        "signature": {
            "algorithm": _ALGORITHM,
            "public_key_fingerprint": public_key_fingerprint(public_key_pem(key)),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }
    return canonical_json(signed).decode("utf-8")


def authorize_run(
    run: RunSpec,
    key: Ed25519PrivateKey,
    *,
    issued_at: datetime | None = None,
    audit_checkpoint: dict[str, Any] | None = None,
) -> RunSpec:
    """Return ``run`` with its signed authorization (the run needs an ``admin_run_id``)."""
    if not run.admin_run_id:
        raise ValueError("A run needs an admin_run_id to be authorized.")
    authorization = RunAuthorization(
        admin_run_id=run.admin_run_id,
        federation=run.federation.name,
        federation_digest=run.federation.digest(),
        members=run.members,
        issued_at=(issued_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        audit_checkpoint=audit_checkpoint,
    )
    return run.model_copy(update={"authorization": sign_run_authorization(authorization, key)})


def authorization_digest(signed: str) -> str:
    """SHA-256 hex of the signed text (what a node records when it binds a run)."""
    return hashlib.sha256(signed.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- verifying


def load_pinned_key(pem: str) -> Ed25519PublicKey:
    """Parse the pinned coordinator public key, or raise ``run_bad_pinned_key``."""
    try:
        public_key_fingerprint(pem)  # checks that it is an Ed25519 public key PEM
    except ReleaseError as err:
        raise RunAuthorizationError(
            "run_bad_pinned_key",
            f"The pinned coordinator public key is unusable ({err.message}). Put the PEM from "
            "the coordinator's GET /api/v1/signing-key (or the enrollment answer) in the file "
            "[coordinator].public_key names.",
        ) from err
    key = serialization.load_pem_public_key(pem.encode("utf-8"))
    assert isinstance(key, Ed25519PublicKey)
    return key


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _malformed(detail: str) -> RunAuthorizationError:
    return RunAuthorizationError(
        "run_malformed_authorization",
        f"The run's authorization is damaged ({detail}); this node refuses the run. {_ASK_ADMIN}",
    )


def _parts(signed: str) -> tuple[dict[str, Any], str, bytes]:
    """Split the signed text into (authorization body, signer fingerprint, signature)."""
    try:
        document = json.loads(signed, parse_constant=_reject_constant)
    except ValueError as err:
        raise _malformed(f"not JSON: {err}") from err
    if not isinstance(document, dict) or set(document) != {"authorization", "signature"}:
        raise _malformed('expected {"authorization": {...}, "signature": {...}}')
    body, signature = document["authorization"], document["signature"]
    if not isinstance(body, dict) or not isinstance(signature, dict):
        raise _malformed("'authorization' and 'signature' must be objects")
    if signature.get("algorithm") != _ALGORITHM:
        raise _malformed(f"signature algorithm {signature.get('algorithm')!r} is not ed25519")
    fingerprint, value = signature.get("public_key_fingerprint"), signature.get("value")
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not isinstance(fingerprint, str) or len(raw) != _SIGNATURE_BYTES:
        raise _malformed(
            f"the signature needs a key fingerprint and {_SIGNATURE_BYTES} bytes of base64"
        )
    return body, fingerprint, raw


def verify_run_authorization(
    signed: str | None,
    public_key_pem: str,
    *,
    federation_digest: str,
    node_id: int,
) -> RunAuthorization:
    """Check a run's signed authorization for this node; return what it authorizes.

    In order: present (``run_unsigned``), well formed (``run_malformed_authorization``),
    signed by the pinned key (``run_foreign_key``), not altered (``run_bad_signature``), for
    the federation spec the message carries (``run_spec_mismatch``) and with this node among
    its members (``run_not_member``).
    """
    pinned = load_pinned_key(public_key_pem)
    if not signed:
        raise RunAuthorizationError(
            "run_unsigned",
            "The run carries no authorization signed by the coordinator's admin service; this "
            f"node refuses it. {_ASK_ADMIN}",
        )
    body, signer, signature = _parts(signed)
    trusted = public_key_fingerprint(public_key_pem)
    if signer != trusted:
        raise RunAuthorizationError(
            "run_foreign_key",
            f"The run is signed by key {signer}, but this node trusts only the coordinator key "
            f"{trusted} ([coordinator].public_key); it refuses the run. If the coordinator's "
            "key really changed, pin the new key after checking its fingerprint out of band.",
        )
    try:
        pinned.verify(signature, _DOMAIN + canonical_json(body))
    except (InvalidSignature, ReleaseError) as err:
        raise RunAuthorizationError(
            "run_bad_signature",
            f"The run's authorization does not match its signature by {trusted}: it was "
            f"altered after the admin service signed it. This node refuses the run. {_ASK_ADMIN}",
        ) from err
    try:
        authorization = RunAuthorization.model_validate(body)
    except ValidationError as err:
        raise _malformed(describe_validation_error(err)) from err
    if authorization.federation_digest != federation_digest:
        raise RunAuthorizationError(
            "run_spec_mismatch",
            f"The federation spec sent (digest {federation_digest[:12]}…) is not the one the "
            f"admin service authorized for run {authorization.admin_run_id} "
            f"(digest {authorization.federation_digest[:12]}…): the spec was changed after "
            "signing. This node refuses the run.",
        )
    if authorization.member(node_id) is None:
        raise RunAuthorizationError(
            "run_not_member",
            f"This node (Flower node id {node_id}) is not a member of run "
            f"{authorization.admin_run_id} as the admin service authorized it "
            f"({', '.join(m.name for m in authorization.members)}); it refuses the run.",
        )
    return authorization
