"""Cryptographic tooling: the deployment PKI (CA, SuperLink TLS certificate, node keys) and
signed model releases (`lepton_fl.crypto.release`: Ed25519 manifests over safetensors weights).
"""

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
