"""Nodes: create (one-time enrollment token), enroll, list, get, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from coordinator.api.deps import CallerDep, ContextDep
from coordinator.api.routes import ERRORS, SUPERLINK_ERRORS
from coordinator.api.schemas import EnrolledNodeOut, EnrollIn, NodeCreatedOut, NodeIn, NodeOut
from coordinator.services import nodes
from lepton_fl.crypto.release import public_key_fingerprint, public_key_pem

router = APIRouter(tags=["nodes"], responses=ERRORS)


@router.post("/nodes", response_model=NodeCreatedOut, status_code=status.HTTP_201_CREATED)
def create_node(body: NodeIn, caller: CallerDep) -> NodeCreatedOut:
    """Create a node of a tenant; the response carries its one-time enrollment token."""
    node, token = nodes.create_node(
        caller.ctx.db,
        caller.actor,
        name=body.name,
        tenant_id=body.tenant_id,
        epsilon_budget=body.epsilon_budget,
        token_ttl_hours=body.token_ttl_hours,
    )
    return NodeCreatedOut(**NodeOut.of(node).model_dump(), enrollment_token=token)


@router.post("/nodes/enroll", response_model=EnrolledNodeOut, responses=SUPERLINK_ERRORS)
def enroll_node(body: EnrollIn, ctx: ContextDep) -> EnrolledNodeOut:
    """The node enrolls: its one-time token and OpenSSH public key (no API key needed).

    The coordinator registers the key with the SuperLink; the node id the SuperLink returns
    is the node's Flower identity. The answer carries the coordinator's signing public key,
    which the node pins (node.toml ``[coordinator] public_key``) to verify every run.
    """
    node = nodes.enroll_node(
        ctx.db, token=body.token, public_key=body.public_key, registry=ctx.registry
    )
    pem = public_key_pem(ctx.signing_key)
    return EnrolledNodeOut(
        **NodeOut.of(node).model_dump(),
        coordinator_public_key_pem=pem,
        coordinator_key_fingerprint=public_key_fingerprint(pem),
    )


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(
    caller: CallerDep,
    tenant_id: Annotated[str | None, Query(max_length=36)] = None,
) -> list[NodeOut]:
    """Nodes (a tenant admin sees its own)."""
    return [
        NodeOut.of(n) for n in nodes.list_nodes(caller.ctx.db, caller.actor, tenant_id=tenant_id)
    ]


@router.get("/nodes/{node_id}", response_model=NodeOut)
async def get_node(node_id: str, caller: CallerDep) -> NodeOut:
    """One node."""
    return NodeOut.of(nodes.get_node(caller.ctx.db, caller.actor, node_id))


@router.post("/nodes/{node_id}/revoke", response_model=NodeOut, responses=SUPERLINK_ERRORS)
def revoke_node(node_id: str, caller: CallerDep) -> NodeOut:
    """Revoke a node: its key is unregistered from the SuperLink and it can no longer join."""
    return NodeOut.of(
        nodes.revoke_node(caller.ctx.db, caller.actor, node_id, registry=caller.ctx.registry)
    )
