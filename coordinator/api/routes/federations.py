"""Federations and their members."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from coordinator.api.deps import ActorDep, ContextDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import FederationIn, FederationOut, MemberOut
from coordinator.services import federations
from coordinator.services.federations import FederationDefinition

router = APIRouter(tags=["federations"], responses=ERRORS)


@router.post("/federations", response_model=FederationOut, status_code=status.HTTP_201_CREATED)
def create_federation(body: FederationIn, actor: ActorDep, ctx: ContextDep) -> FederationOut:
    """Create a federation: task, model, privacy policy, rounds, secure aggregation, members."""
    definition = FederationDefinition.model_validate(body.model_dump(exclude={"members"}))
    return FederationOut.of(
        federations.create_federation(ctx.db, actor, definition, members=body.members)
    )


@router.get("/federations", response_model=list[FederationOut])
def list_federations(actor: ActorDep, ctx: ContextDep) -> list[FederationOut]:
    """Every federation."""
    return [FederationOut.of(f) for f in federations.list_federations(ctx.db, actor)]


@router.get("/federations/{federation_id}", response_model=FederationOut)
def get_federation(federation_id: str, actor: ActorDep, ctx: ContextDep) -> FederationOut:
    """One federation."""
    return FederationOut.of(federations.get_federation(ctx.db, actor, federation_id))


@router.get("/federations/{federation_id}/members", response_model=list[MemberOut])
def list_members(federation_id: str, actor: ActorDep, ctx: ContextDep) -> list[MemberOut]:
    """Members (a tenant admin sees its own nodes among them)."""
    return [MemberOut.of(m) for m in federations.list_members(ctx.db, actor, federation_id)]


@router.put("/federations/{federation_id}/members/{node_id}", response_model=MemberOut)
def add_member(federation_id: str, node_id: str, actor: ActorDep, ctx: ContextDep) -> MemberOut:
    """Add a node (platform admin: approved) or request membership (tenant admin, own node)."""
    return MemberOut.of(federations.add_member(ctx.db, actor, federation_id, node_id))


@router.delete(
    "/federations/{federation_id}/members/{node_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
def remove_member(federation_id: str, node_id: str, actor: ActorDep, ctx: ContextDep) -> Response:
    """Remove a node from a federation."""
    federations.remove_member(ctx.db, actor, federation_id, node_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
