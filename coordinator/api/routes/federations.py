"""Federations and their members."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from coordinator.api.deps import CallerDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import FederationIn, FederationOut, MemberOut
from coordinator.services import federations
from coordinator.services.federations import FederationDefinition

router = APIRouter(tags=["federations"], responses=ERRORS)


@router.post("/federations", response_model=FederationOut, status_code=status.HTTP_201_CREATED)
def create_federation(body: FederationIn, caller: CallerDep) -> FederationOut:
    """Create a federation: task, model, privacy policy, rounds, secure aggregation, members."""
    definition = FederationDefinition.model_validate(body.model_dump(exclude={"members"}))
    return FederationOut.of(
        federations.create_federation(caller.ctx.db, caller.actor, definition, members=body.members)
    )


@router.get("/federations", response_model=list[FederationOut])
def list_federations(caller: CallerDep) -> list[FederationOut]:
    """Every federation."""
    return [FederationOut.of(f) for f in federations.list_federations(caller.ctx.db, caller.actor)]


@router.get("/federations/{federation_id}", response_model=FederationOut)
async def get_federation(federation_id: str, caller: CallerDep) -> FederationOut:
    """One federation."""
    return FederationOut.of(federations.get_federation(caller.ctx.db, caller.actor, federation_id))


@router.get("/federations/{federation_id}/members", response_model=list[MemberOut])
def list_members(federation_id: str, caller: CallerDep) -> list[MemberOut]:
    """Members (a tenant admin sees its own nodes among them)."""
    return [
        MemberOut.of(m)
        for m in federations.list_members(caller.ctx.db, caller.actor, federation_id)
    ]


@router.put("/federations/{federation_id}/members/{node_id}", response_model=MemberOut)
def add_member(federation_id: str, node_id: str, caller: CallerDep) -> MemberOut:
    """Add a node (platform admin: approved) or request membership (tenant admin, own node)."""
    return MemberOut.of(federations.add_member(caller.ctx.db, caller.actor, federation_id, node_id))


@router.delete(
    "/federations/{federation_id}/members/{node_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
def remove_member(federation_id: str, node_id: str, caller: CallerDep) -> Response:
    """Remove a node from a federation."""
    federations.remove_member(caller.ctx.db, caller.actor, federation_id, node_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
