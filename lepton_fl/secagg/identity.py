"""Signed key advertisements: who may take part in a session, and whose keys are whose.

Without signatures an active coordinator could substitute a node's advertised public keys
with its own (a man in the middle on the share encryption and the masks) or invent
participants it controls.  Each node therefore signs its advertisement with its enrolled
authentication key (the OpenSSH EC key its SuperNode authenticates with), and checks, with
the members' enrolled public keys taken from something it trusts (the run authorization
the admin service signed):

* at advertise time, that every offered participant is a member of the run;
* at share time, that every advertised key set carries a valid signature by its node.

The signature is ECDSA with SHA-256 over :func:`advertisement_bytes`: a domain prefix, the
advertisement's binding (run, session, ``"setup"``, ``session_advertise_keys``), the node
id and the advertised public keys, each length-prefixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lepton_fl.secagg.messages import SETUP, Binding, PublicKeys, Stage

ADVERTISE_DOMAIN = b"lepton-secagg/v1/advertise-keys\x00"
MAX_SIGNATURE_BYTES = 160  # DER ECDSA on P-521 is at most 139 bytes

__all__ = [
    "ADVERTISE_DOMAIN",
    "NodeIdentity",
    "advertisement_bytes",
    "load_member_key",
    "load_signing_key",
]


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def advertisement_bytes(run_id: str, session: int, node_id: int, keys: PublicKeys) -> bytes:
    """What a node signs when it advertises ``keys`` in setup wave 1 of a session."""
    binding = Binding(run_id, session, SETUP, Stage.ADVERTISE_KEYS)
    return (
        ADVERTISE_DOMAIN
        + _field(binding.to_bytes())
        + int(node_id).to_bytes(8, "big")
        + _field(keys.enc)
        + len(keys.masks).to_bytes(4, "big")
        + b"".join(_field(m) for m in keys.masks)
    )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's enrolled signing key, and the run's members with their enrolled keys.

    ``members`` maps each member's Flower node id to its enrolled public key; it must come
    from something the node trusts (the signed run authorization), never from the server.
    """

    signing_key: ec.EllipticCurvePrivateKey
    members: Mapping[int, ec.EllipticCurvePublicKey]

    def sign(self, run_id: str, session: int, node_id: int, keys: PublicKeys) -> bytes:
        """ECDSA-SHA256 signature of this node's advertisement."""
        message = advertisement_bytes(run_id, session, node_id, keys)
        return self.signing_key.sign(message, ec.ECDSA(hashes.SHA256()))

    def verify(self, run_id: str, session: int, node_id: int, keys: PublicKeys) -> bool:
        """Whether ``keys`` carry a valid signature by member ``node_id``'s enrolled key."""
        public = self.members.get(node_id)
        if public is None or not 0 < len(keys.signature) <= MAX_SIGNATURE_BYTES:
            return False
        message = advertisement_bytes(run_id, session, node_id, keys)
        try:
            public.verify(keys.signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


def load_signing_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted OpenSSH EC private key (the node's ``[auth] private_key``)."""
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"not an unencrypted OpenSSH private key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"an OpenSSH {type(key).__name__}, not an EC key on a NIST curve")
    return key


def load_member_key(line: str) -> ec.EllipticCurvePublicKey:
    """Parse a member's OpenSSH EC public key line (``ecdsa-sha2-nistp384 AAAA...``)."""
    try:
        key = serialization.load_ssh_public_key(line.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"not an OpenSSH public key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"an OpenSSH {type(key).__name__}, not an EC key on a NIST curve")
    return key
