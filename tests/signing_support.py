"""Run authorizations in tests: a fixed test key stands in for the coordinator's admin service.

Nodes built in process pin `TEST_PUBLIC_PEM` (`pin_key` writes it beside their settings and
returns the `[coordinator]` section); instructions are signed with `signed`, which stands in
for the admin service starting a run. Every node id has a fixed enrolled EC key (`node_key`),
whose public half the authorization lists for each member; `write_node_key` writes it where
node.toml's `[auth] private_key` points, so that the node can sign its secure-aggregation
keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_fl.config import FederationSpec, Member
from lepton_fl.crypto.release import public_key_pem
from lepton_fl.crypto.run_authorization import RunAuthorization, sign_run_authorization
from lepton_fl.wire import RoundInstruction

TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TEST_PUBLIC_PEM = public_key_pem(TEST_KEY)
DEFAULT_NODE_IDS = (9,)  # the node id the trainer tests' envelopes carry


def node_key(node_id: int) -> ec.EllipticCurvePrivateKey:
    """The enrolled OpenSSH EC key of the node with Flower id ``node_id`` (fixed per id)."""
    return ec.derive_private_key(1_000_003 + node_id, ec.SECP384R1())


def node_public_key(node_id: int) -> str:
    """The OpenSSH public key line of ``node_key(node_id)``."""
    public = node_key(node_id).public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def write_node_key(directory: Path, node_id: int) -> str:
    """Write ``node_key(node_id)`` as an OpenSSH private key; return its path."""
    path = directory / "node-key"
    path.write_bytes(
        node_key(node_id).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def pin_key(directory: Path, *, pem: str = TEST_PUBLIC_PEM) -> dict[str, Any]:
    """Write the pinned coordinator key into ``directory``; return node.toml's section."""
    path = directory / "coordinator.pem"
    path.write_text(pem)
    return {"public_key": str(path)}


def authorization(
    fed: FederationSpec,
    *,
    node_ids: Iterable[int] = DEFAULT_NODE_IDS,
    admin_run_id: str = "admin-run-1",
    key: Ed25519PrivateKey = TEST_KEY,
    audit_checkpoint: dict[str, Any] | None = None,
) -> str:
    """The admin service's signed authorization of a run of ``fed`` on ``node_ids``."""
    members = tuple(
        Member(name=f"node-{n}", node_id=n, public_key=node_public_key(n)) for n in node_ids
    )
    body = RunAuthorization(
        admin_run_id=admin_run_id,
        federation=fed.name,
        federation_digest=fed.digest(),
        members=members,
        issued_at="2026-01-01T00:00:00+00:00",
        audit_checkpoint=audit_checkpoint,
    )
    return sign_run_authorization(body, key)


def signed(
    fed: FederationSpec,
    rnd: int,
    weights: list[np.ndarray] | None = None,
    *,
    node_ids: Iterable[int] = DEFAULT_NODE_IDS,
    admin_run_id: str = "admin-run-1",
    key: Ed25519PrivateKey = TEST_KEY,
    audit_checkpoint: dict[str, Any] | None = None,
) -> RoundInstruction:
    """A round instruction carrying a signed authorization, as the ServerApp sends it."""
    return RoundInstruction(
        fed,
        rnd,
        list(weights or []),
        authorization=authorization(
            fed,
            node_ids=node_ids,
            admin_run_id=admin_run_id,
            key=key,
            audit_checkpoint=audit_checkpoint,
        ),
    )


def with_authorization(instruction: RoundInstruction, **kwargs: Any) -> RoundInstruction:
    """``instruction`` with a signed authorization (see `authorization` for the options)."""
    return dataclasses.replace(
        instruction, authorization=authorization(instruction.federation, **kwargs)
    )
