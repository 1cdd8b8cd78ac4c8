"""Nodes: created by a tenant admin, enrolled by the node itself, revoked by an admin.

Creating a node returns a one-time enrollment token (random, stored only as its SHA-256,
expiring). The node presents the token with its OpenSSH public key; the coordinator
registers that key with the SuperLink and stores the Flower node id the SuperLink returns:
that id, obtained by the coordinator for a key it registered, is the authenticated mapping
from Flower node ids to enrolled nodes. Revoking a node unregisters its key, after which
the SuperLink refuses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Node, Tenant
from coordinator.services import audit
from coordinator.services.common import (
    SYSTEM,
    Actor,
    check_tenant_visible,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    parse_iso,
    require_role,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import (
    ConflictError,
    InvalidError,
    UnauthenticatedError,
    no_superlink,
)
from coordinator.services.gateway import NodeRegistry

TOKEN_SCHEME = "lft"  # noqa: S105 (a visible label, not a secret)
DEFAULT_EPSILON_BUDGET = 8.0
DEFAULT_TOKEN_TTL_HOURS = 24
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_node(
    db: Database,
    actor: Actor,
    *,
    name: str,
    tenant_id: str | None = None,
    epsilon_budget: float = DEFAULT_EPSILON_BUDGET,
    token_ttl_hours: int = DEFAULT_TOKEN_TTL_HOURS,
) -> tuple[Node, str]:
    """A pending node of a tenant and its one-time enrollment token (shown once)."""
    require_writer(actor, action="create nodes")
    require_role(actor, "platform_admin", "tenant_admin", action="create nodes")
    if actor.role == "tenant_admin":
        tenant_id = tenant_id or actor.tenant_id
    if tenant_id is None:
        raise InvalidError(
            "A platform admin must say which tenant the node belongs to (tenant_id).",
            code="tenant_required",
        )
    check_tenant_visible(actor, tenant_id, "tenant", tenant_id)
    token = f"{TOKEN_SCHEME}_{secrets.token_urlsafe(32)}"
    expires = datetime.now(UTC) + timedelta(hours=token_ttl_hours)
    with db.write() as session:
        tenant = session.get(Tenant, tenant_id) if looks_like_id(tenant_id) else None
        if tenant is None:
            raise not_found("tenant", tenant_id)
        if tenant.disabled:
            raise ConflictError(
                f"Tenant {tenant.name} is disabled; it cannot add nodes.", code="tenant_disabled"
            )
        if session.exec(select(Node).where(Node.name == name)).first() is not None:
            raise ConflictError(
                f"A node named {name!r} already exists; node names are unique across the "
                "platform (they name the node in run journals).",
                code="duplicate_name",
            )
        node = Node(
            id=new_id(),
            tenant_id=tenant_id,
            name=name,
            epsilon_budget=epsilon_budget,
            state="pending",
            token_hash=_token_hash(token),
            token_expires_at=expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            created_at=now_iso(),
        )
        session.add(node)
        audit.append_event(
            session,
            actor,
            "node.create",
            f"node:{node.id}",
            {"name": name, "tenant_id": tenant_id, "epsilon_budget": epsilon_budget},
        )
    return node, token


def parse_public_key(public_key: str) -> tuple[str, str]:
    """Check an OpenSSH EC public key on a NIST curve; return (normalised key, fingerprint)."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith("ecdsa-sha2-nistp"):
        raise InvalidError(
            "public_key must be an OpenSSH EC public key on a NIST curve (a line starting "
            "'ecdsa-sha2-nistp256 AAAA...'), as `lepton certs node-key` writes to NAME.pub.",
            code="invalid_public_key",
        )
    normalised = f"{parts[0]} {parts[1]}"
    try:
        key = load_ssh_public_key(normalised.encode("ascii"))
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, UnicodeEncodeError, binascii.Error, TypeError) as err:
        raise InvalidError(
            f"public_key is not a readable OpenSSH public key: {err}.", code="invalid_public_key"
        ) from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise InvalidError(
            "public_key must be an EC key on P-256, P-384 or P-521 (what the SuperLink accepts).",
            code="invalid_public_key",
        )
    return normalised, hashlib.sha256(blob).hexdigest()


def enroll_node(
    db: Database, *, token: str, public_key: str, registry: NodeRegistry | None
) -> Node:
    """The node's side: a valid unused token and a public key; the key gets registered."""
    normalised, fingerprint = parse_public_key(public_key)
    refused = UnauthenticatedError(
        "The enrollment token is not valid: it is unknown, already used, or expired. Ask "
        "your tenant admin to create the node again for a fresh token.",
        code="invalid_enrollment_token",
    )
    if not token.startswith(f"{TOKEN_SCHEME}_"):
        raise refused
    with db.write() as session:
        node = session.exec(select(Node).where(Node.token_hash == _token_hash(token))).first()
        if node is None or node.state != "pending" or node.token_expires_at is None:
            raise refused
        if parse_iso(node.token_expires_at) < datetime.now(UTC):
            raise refused
        tenant = session.get(Tenant, node.tenant_id)
        if tenant is None or tenant.disabled:
            raise refused
        clash = session.exec(
            select(Node).where(
                Node.public_key_fingerprint == fingerprint, col(Node.state) == "enrolled"
            )
        ).first()
        if clash is not None:
            raise ConflictError(
                "This public key is already enrolled for another node; create a new key "
                "pair for this node (`lepton certs node-key`).",
                code="duplicate_public_key",
            )
        if registry is None:
            raise no_superlink()
        flower_node_id = registry.register(normalised, name=node.name)
        try:
            node.state = "enrolled"
            node.token_hash = None
            node.public_key = normalised
            node.public_key_fingerprint = fingerprint
            node.flower_node_id = str(flower_node_id)
            node.enrolled_at = now_iso()
            session.add(node)
            audit.append_event(
                session,
                Actor(role="node", label=f"node:{node.id}", tenant_id=node.tenant_id),
                "node.enroll",
                f"node:{node.id}",
                {"flower_node_id": flower_node_id, "public_key_sha256": fingerprint},
            )
            session.flush()
        except Exception:
            registry.unregister(flower_node_id)
            raise
    return node


def list_nodes(db: Database, actor: Actor, *, tenant_id: str | None = None) -> list[Node]:
    """Nodes: a tenant-scoped key's own; everyone's (optionally one tenant's) for the others."""
    scope = scope_tenant(actor)
    with db.read() as session:
        query = select(Node).order_by(col(Node.created_at))
        if scope is not None:
            query = query.where(Node.tenant_id == scope)
        elif tenant_id is not None:
            query = query.where(Node.tenant_id == tenant_id)
        return list(session.exec(query).all())


def get_node(db: Database, actor: Actor, node_id: str) -> Node:
    """One node; 404 if it is another tenant's."""
    node = db.fetch(Node, node_id) if looks_like_id(node_id) else None
    if node is None:
        raise not_found("node", node_id)
    check_tenant_visible(actor, node.tenant_id, "node", node_id)
    return node


def revoke_node(db: Database, actor: Actor, node_id: str, *, registry: NodeRegistry | None) -> Node:
    """Revoke a node: unregister its key from the SuperLink, so it can no longer join."""
    require_writer(actor, action="revoke nodes")
    require_role(actor, "platform_admin", "tenant_admin", action="revoke nodes")
    with db.write() as session:
        node = session.get(Node, node_id) if looks_like_id(node_id) else None
        if node is None:
            raise not_found("node", node_id)
        check_tenant_visible(actor, node.tenant_id, "node", node_id)
        if node.state == "revoked":
            return node
        was_enrolled = node.state == "enrolled" and node.flower_node_id is not None
        node.state = "revoked"
        node.token_hash = None
        node.revoked_at = now_iso()
        session.add(node)
        audit.append_event(
            session,
            actor,
            "node.revoke",
            f"node:{node.id}",
            {"flower_node_id": node.flower_node_id},
        )
        session.flush()
        if was_enrolled:
            if registry is None:
                raise no_superlink()
            registry.unregister(int(str(node.flower_node_id)))
    return node


def node_names_to_ids(db: Database, names: list[str]) -> dict[str, str]:
    """Node name -> id, for the ServerApp's round records (which name nodes)."""
    with db.read() as session:
        rows = session.exec(select(Node).where(col(Node.name).in_(names))).all()
    return {n.name: n.id for n in rows}


def enrolled_keys(db: Database) -> list[tuple[str, str, int]]:
    """Every enrolled node's (name, public key, Flower node id): the registrations the
    SuperLink must hold. Revoked nodes (and the nodes of disabled tenants, which are revoked
    with them) are not among them."""
    with db.read() as session:
        nodes = session.exec(
            select(Node).where(Node.state == "enrolled").order_by(col(Node.created_at))
        ).all()
    return [
        (n.name, n.public_key, int(n.flower_node_id))
        for n in nodes
        if n.public_key is not None and n.flower_node_id is not None
    ]


def known_keys(db: Database) -> set[str]:
    """Every public key the admin database holds (``<type> <base64>``), in any state."""
    with db.read() as session:
        keys = session.exec(select(Node.public_key).where(col(Node.public_key).is_not(None)))
        return {" ".join(str(k).split()[:2]) for k in keys.all()}


def record_new_node_ids(db: Database, moved: Mapping[int, int]) -> None:
    """The SuperLink started empty and registered every enrolled key again under new node
    ids (``moved``: old id -> new id): keep them, and say so in the audit log."""
    if not moved:
        return
    with db.write() as session:
        nodes = session.exec(select(Node).where(Node.state == "enrolled")).all()
        changed: dict[str, dict[str, int]] = {}
        for node in nodes:
            old = int(node.flower_node_id) if node.flower_node_id is not None else None
            if old is not None and old in moved and moved[old] != old:
                node.flower_node_id = str(moved[old])
                session.add(node)
                changed[node.id] = {"from": old, "to": moved[old]}
        audit.append_event(
            session,
            SYSTEM,
            "superlink.nodes_registered_again",
            "superlink",
            {"nodes": len(moved), "node_ids": changed},
        )
