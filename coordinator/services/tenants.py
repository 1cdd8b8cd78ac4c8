"""Tenants: create, list, get, disable (a disabled tenant's keys and nodes stop working)."""

from __future__ import annotations

import logging
from typing import cast

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.engine import Record, driver_sql
from coordinator.db.tables import Node, Tenant
from coordinator.services import audit, keys
from coordinator.services.common import (
    Actor,
    check_tenant_visible,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    require_role,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import ConflictError
from coordinator.services.gateway import NodeRegistry

log = logging.getLogger(__name__)
_INSERT = (
    "INSERT INTO tenants (id, name, display_name, disabled, created_at, disabled_at) "
    "VALUES (:id, :name, :display_name, :disabled, :created_at, :disabled_at)"
)


def create_tenant(db: Database, actor: Actor, *, name: str, display_name: str = "") -> Tenant:
    """A new tenant; its name is unique."""
    require_writer(actor, action="create tenants")
    require_role(actor, "platform_admin", action="create tenants")
    try:
        with db.write() as session:
            cursor = driver_sql(
                session, "SELECT id FROM tenants WHERE name = :name", {"name": name}
            )
            clash = cursor.fetchone()
            cursor.close()
            if clash is not None:
                raise _duplicate(name)
            fields = {
                "id": new_id(),
                "name": name,
                "display_name": display_name,
                "disabled": False,
                "created_at": now_iso(),
                "disabled_at": None,
            }
            driver_sql(session, _INSERT, fields).close()
            tenant = cast(Tenant, Record(fields))
            audit.append_event(
                session, actor, "tenant.create", f"tenant:{tenant.id}", {"name": name}
            )
    except IntegrityError as err:  # a concurrent create won the race
        raise _duplicate(name) from err
    return tenant


def _duplicate(name: str) -> ConflictError:
    return ConflictError(
        f"A tenant named {name!r} already exists; choose another name.", code="duplicate_name"
    )


def list_tenants(db: Database, actor: Actor) -> list[Tenant]:
    """Every tenant for platform admins and the platform auditor; its own for a
    tenant-scoped key (tenant admin, tenant auditor)."""
    scope = scope_tenant(actor)
    with db.read() as session:
        query = select(Tenant).order_by(col(Tenant.created_at))
        if scope is not None:
            query = query.where(Tenant.id == scope)
        return list(session.exec(query).all())


def get_tenant(db: Database, actor: Actor, tenant_id: str) -> Tenant:
    """One tenant (404 for another tenant's admin or auditor)."""
    check_tenant_visible(actor, tenant_id, "tenant", tenant_id)
    tenant = db.fetch(Tenant, tenant_id) if looks_like_id(tenant_id) else None
    if tenant is None:
        raise not_found("tenant", tenant_id)
    return tenant


def disable_tenant(
    db: Database, actor: Actor, tenant_id: str, *, registry: NodeRegistry | None
) -> Tenant:
    """Disable a tenant: its keys stop authenticating, its nodes are unregistered."""
    require_writer(actor, action="disable tenants")
    require_role(actor, "platform_admin", action="disable tenants")
    unregister: list[int] = []
    with db.write() as session:
        tenant = session.get(Tenant, tenant_id) if looks_like_id(tenant_id) else None
        if tenant is None:
            raise not_found("tenant", tenant_id)
        if not tenant.disabled:
            tenant.disabled = True
            tenant.disabled_at = now_iso()
            session.add(tenant)
            nodes = session.exec(select(Node).where(Node.tenant_id == tenant_id)).all()
            for node in nodes:
                if node.state == "enrolled" and node.flower_node_id is not None:
                    unregister.append(int(node.flower_node_id))
                if node.state != "revoked":
                    node.state = "revoked"
                    node.revoked_at = tenant.disabled_at
                    node.token_hash = None
                    session.add(node)
            audit.append_event(
                session,
                actor,
                "tenant.disable",
                f"tenant:{tenant.id}",
                {"name": tenant.name, "nodes_revoked": [n.id for n in nodes]},
            )
    keys.invalidate_cache()
    if registry is not None:
        for flower_node_id in unregister:
            registry.unregister(flower_node_id)
    return tenant
