"""Tenants and API keys."""

from __future__ import annotations

from fastapi import APIRouter, status

from coordinator.api.deps import ActorDep, CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import (
    ApiKeyCreatedOut,
    ApiKeyIn,
    ApiKeyOut,
    MeOut,
    TenantIn,
    TenantOut,
)
from coordinator.services import keys, tenants

router = APIRouter(responses=ERRORS)


@router.get("/me", response_model=MeOut, tags=["keys"])
async def me(actor: ActorDep) -> MeOut:
    """Who this API key is."""
    return MeOut(role=actor.role, tenant_id=actor.tenant_id, key_id=actor.key_id)


@router.post(
    "/tenants", response_model=TenantOut, status_code=status.HTTP_201_CREATED, tags=["tenants"]
)
async def create_tenant(body: TenantIn, caller: CallerDep) -> TenantOut:
    """Create a tenant (platform admin)."""
    return TenantOut.of(
        tenants.create_tenant(
            caller.ctx.db, caller.actor, name=body.name, display_name=body.display_name
        )
    )


@router.get("/tenants", response_model=list[TenantOut], tags=["tenants"])
def list_tenants(caller: CallerDep) -> list[TenantOut]:
    """Tenants (a tenant admin sees its own)."""
    return [TenantOut.of(t) for t in tenants.list_tenants(caller.ctx.db, caller.actor)]


@router.get("/tenants/{tenant_id}", response_model=TenantOut, tags=["tenants"])
async def get_tenant(tenant_id: str, caller: CallerDep) -> TenantOut:
    """One tenant."""
    return TenantOut.of(tenants.get_tenant(caller.ctx.db, caller.actor, tenant_id))


@router.post("/tenants/{tenant_id}/disable", response_model=TenantOut, tags=["tenants"])
def disable_tenant(tenant_id: str, caller: CallerDep) -> TenantOut:
    """Disable a tenant: its keys stop working and its nodes are unregistered."""
    return TenantOut.of(
        tenants.disable_tenant(caller.ctx.db, caller.actor, tenant_id, registry=caller.ctx.registry)
    )


@router.post(
    "/api-keys", response_model=ApiKeyCreatedOut, status_code=status.HTTP_201_CREATED, tags=["keys"]
)
def create_key(body: ApiKeyIn, caller: CallerDep) -> ApiKeyCreatedOut:
    """Create an API key; the full key is in this response only."""
    row, full = keys.create_key(
        caller.ctx.db, caller.actor, role=body.role, tenant_id=body.tenant_id, name=body.name
    )
    return ApiKeyCreatedOut(**ApiKeyOut.of(row).model_dump(), key=full)


@router.get("/api-keys", response_model=list[ApiKeyOut], tags=["keys"])
def list_keys(caller: CallerDep) -> list[ApiKeyOut]:
    """API keys, by prefix (never the secret)."""
    return [ApiKeyOut.of(k) for k in keys.list_keys(caller.ctx.db, caller.actor)]


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyOut, tags=["keys"])
def revoke_key(key_id: str, caller: CallerDep) -> ApiKeyOut:
    """Revoke an API key."""
    return ApiKeyOut.of(keys.revoke_key(caller.ctx.db, caller.actor, key_id))
