"""Federations: task, model, privacy policy and member nodes.

A federation's definition is validated twice: field by field by pydantic (the API names
the field in its 422), then as a whole here (secure aggregation needs at least three
participants; its threshold cannot exceed them), and it must build a `FederationSpec`,
which is what every run sends to the nodes.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Federation, FederationMember, Node
from coordinator.services import audit
from coordinator.services.common import (
    Actor,
    canonical_json,
    check_tenant_visible,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    require_role,
    require_writer,
    scope_tenant,
)
from coordinator.services.errors import ConflictError, InvalidError
from lepton_fl.config import (
    FederationSpec,
    ModelConfig,
    PrivacySpec,
    SecureAggregationSpec,
    TrainingSpec,
    describe_validation_error,
)
from lepton_fl.model_init import model_task_problem

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelBody(ModelConfig):
    """Which registered model to build."""

    model_config = _STRICT
    # () is logistic regression for tabular_mlp (and a head without hidden layers elsewhere)
    hidden: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        default=(32,), min_length=0, max_length=16
    )


class PrivacyBody(PrivacySpec):
    """Sample-level DP-SGD: target epsilon of a whole run, delta, clipping norm, accountant."""

    model_config = _STRICT
    max_grad_norm: Annotated[float, Field(gt=0, le=1e6)] = 1.0


class TrainingBody(TrainingSpec):
    """Local optimisation per round."""

    model_config = _STRICT


class SecureAggregationBody(BaseModel):
    """Secure aggregation: on by default; threshold and neighbours default to safe values
    chosen per round (docs/secagg-threat-model.md)."""

    model_config = _STRICT
    enabled: bool = True
    threshold: Annotated[int, Field(ge=2, le=10_000)] | None = None
    neighbours: Annotated[int, Field(ge=2, le=10_000)] | None = None


class FederationDefinition(BaseModel):
    """What a platform admin defines once; every run of the federation follows it."""

    model_config = _STRICT
    name: str = Field(pattern=SLUG_PATTERN, max_length=63)
    task: str = Field(pattern=SLUG_PATTERN, max_length=63, examples=["heart_disease"])
    model: ModelBody = ModelBody()
    rounds: Annotated[int, Field(ge=1, le=1000)] = 5
    min_participants: Annotated[int, Field(ge=1, le=10_000)] = 3
    privacy: PrivacyBody
    training: TrainingBody = TrainingBody()
    secure_aggregation: SecureAggregationBody = SecureAggregationBody()
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


def check_definition(definition: FederationDefinition) -> FederationSpec:
    """Whole-definition rules, then the `FederationSpec` the runs send."""
    sa = definition.secure_aggregation
    if sa.enabled and definition.min_participants < 3:
        raise InvalidError(
            f"min_participants is {definition.min_participants}, but secure aggregation needs "
            "at least 3 participants per round (with 2, each learns the other's update). "
            "Raise min_participants to 3 or more, or set secure_aggregation.enabled to false.",
            code="invalid_federation",
            field="min_participants",
        )
    if sa.threshold is not None and sa.threshold > definition.min_participants:
        raise InvalidError(
            f"secure_aggregation.threshold ({sa.threshold}) exceeds min_participants "
            f"({definition.min_participants}): a round with the minimum number of "
            "participants could never reconstruct the sum. Lower the threshold.",
            code="invalid_federation",
            field="secure_aggregation.threshold",
        )
    if sa.threshold is not None and sa.neighbours is not None and sa.threshold > sa.neighbours + 1:
        raise InvalidError(
            f"secure_aggregation.threshold ({sa.threshold}) exceeds the {sa.neighbours + 1} "
            "holders of each node's shares (the node and its neighbours).",
            code="invalid_federation",
            field="secure_aggregation.threshold",
        )
    problem = model_task_problem(definition.model, definition.task)
    if problem is not None:
        field, message = problem
        raise InvalidError(
            f"The federation's {field} does not fit: {message}.",
            code="invalid_federation",
            field=field,
        )
    return federation_spec(definition)


def federation_spec(definition: FederationDefinition) -> FederationSpec:
    """The shared `FederationSpec` of a definition."""
    try:
        return FederationSpec(
            name=definition.name,
            task=definition.task,
            model=ModelConfig(**definition.model.model_dump()),
            rounds=definition.rounds,
            min_participants=definition.min_participants,
            privacy=PrivacySpec(**definition.privacy.model_dump()),
            training=TrainingSpec(**definition.training.model_dump()),
            seed=definition.seed,
            secure_aggregation=SecureAggregationSpec(**definition.secure_aggregation.model_dump()),
        )
    except ValidationError as err:
        raise InvalidError(
            f"The federation is invalid: {describe_validation_error(err)}.",
            code="invalid_federation",
        ) from err


def load_definition(federation: Federation) -> FederationDefinition:
    """The stored definition of a federation."""
    return FederationDefinition.model_validate_json(federation.definition)


def create_federation(
    db: Database, actor: Actor, definition: FederationDefinition, *, members: list[str]
) -> Federation:
    """A new federation, optionally with (approved) member nodes."""
    require_writer(actor, action="create federations")
    require_role(actor, "platform_admin", action="create federations")
    check_definition(definition)
    body = canonical_json(definition.model_dump(mode="json"))
    with db.write() as session:
        if session.exec(select(Federation).where(Federation.name == definition.name)).first():
            raise ConflictError(
                f"A federation named {definition.name!r} already exists; choose another name.",
                code="duplicate_name",
            )
        federation = Federation(
            id=new_id(),
            name=definition.name,
            definition=body,
            digest=hashlib.sha256(body.encode()).hexdigest(),
            created_at=now_iso(),
        )
        session.add(federation)
        session.flush()
        for node_id in dict.fromkeys(members):
            node = session.get(Node, node_id) if looks_like_id(node_id) else None
            if node is None:
                raise not_found("node", node_id)
            session.add(
                FederationMember(
                    federation_id=federation.id,
                    node_id=node_id,
                    status="approved",
                    created_at=now_iso(),
                )
            )
        audit.append_event(
            session,
            actor,
            "federation.create",
            f"federation:{federation.id}",
            {"name": definition.name, "digest": federation.digest, "members": members},
        )
    return federation


def list_federations(db: Database, actor: Actor) -> list[Federation]:
    """Every federation (definitions are not tenant secrets; memberships are filtered)."""
    with db.read() as session:
        return list(session.exec(select(Federation).order_by(col(Federation.created_at))).all())


def get_federation(db: Database, actor: Actor, federation_id: str) -> Federation:
    """One federation."""
    federation = db.fetch(Federation, federation_id) if looks_like_id(federation_id) else None
    if federation is None:
        raise not_found("federation", federation_id)
    return federation


def list_members(db: Database, actor: Actor, federation_id: str) -> list[FederationMember]:
    """A federation's members; a tenant-scoped key sees only its own nodes among them."""
    get_federation(db, actor, federation_id)
    scope = scope_tenant(actor)
    with db.read() as session:
        query = select(FederationMember).where(FederationMember.federation_id == federation_id)
        if scope is not None:
            query = query.join(Node, col(Node.id) == FederationMember.node_id).where(
                Node.tenant_id == scope
            )
        return list(session.exec(query.order_by(col(FederationMember.created_at))).all())


def add_member(db: Database, actor: Actor, federation_id: str, node_id: str) -> FederationMember:
    """A platform admin adds a node (approved); a tenant admin requests it for its node."""
    require_writer(actor, action="change federation membership")
    require_role(actor, "platform_admin", "tenant_admin", action="change federation membership")
    with db.write() as session:
        federation = (
            session.get(Federation, federation_id) if looks_like_id(federation_id) else None
        )
        if federation is None:
            raise not_found("federation", federation_id)
        node = session.get(Node, node_id) if looks_like_id(node_id) else None
        if node is None:
            raise not_found("node", node_id)
        check_tenant_visible(actor, node.tenant_id, "node", node_id)
        if node.state == "revoked":
            raise ConflictError(
                f"Node {node.name} is revoked and cannot join a federation.", code="node_revoked"
            )
        status = "requested" if actor.role == "tenant_admin" else "approved"
        member = session.get(FederationMember, (federation_id, node_id))
        if member is not None:
            if member.status == status or member.status == "approved":
                return member
            member.status = status
        else:
            member = FederationMember(
                federation_id=federation_id, node_id=node_id, status=status, created_at=now_iso()
            )
        session.add(member)
        audit.append_event(
            session,
            actor,
            "federation.member_" + ("request" if status == "requested" else "approve"),
            f"federation:{federation_id}",
            {"node_id": node_id, "status": status},
        )
    return member


def remove_member(db: Database, actor: Actor, federation_id: str, node_id: str) -> None:
    """Remove a node from a federation (a tenant admin only its own nodes)."""
    require_writer(actor, action="change federation membership")
    require_role(actor, "platform_admin", "tenant_admin", action="change federation membership")
    with db.write() as session:
        member = (
            session.get(FederationMember, (federation_id, node_id))
            if looks_like_id(federation_id) and looks_like_id(node_id)
            else None
        )
        node = session.get(Node, node_id) if member is not None else None
        if member is None or node is None:
            raise not_found("federation_member", node_id)
        check_tenant_visible(actor, node.tenant_id, "federation_member", node_id)
        session.delete(member)
        audit.append_event(
            session,
            actor,
            "federation.member_remove",
            f"federation:{federation_id}",
            {"node_id": node_id},
        )
