"""Cryptographic tooling: the deployment PKI (CA, SuperLink TLS certificate, node keys)."""

from lepton_fl.crypto.pki import (
    NodeKeyPaths,
    PKIError,
    PKIPaths,
    create_node_key,
    create_pki,
    describe_pki,
    load_pki,
    node_public_key_fingerprint,
)

__all__ = [
    "NodeKeyPaths",
    "PKIError",
    "PKIPaths",
    "create_node_key",
    "create_pki",
    "describe_pki",
    "load_pki",
    "node_public_key_fingerprint",
]
