"""Small shared pieces of the services: who is acting, ids, times, canonical JSON."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from coordinator.services.errors import ForbiddenError, NotFoundError

Role = Literal["platform_admin", "tenant_admin", "auditor"]
ROLES: tuple[Role, ...] = ("platform_admin", "tenant_admin", "auditor")


@dataclass(frozen=True)
class Actor:
    """Who is acting: an API key's role and tenant, or a system component."""

    role: Role | Literal["node", "system"]
    label: str  # what the audit log records, e.g. "key:ab12cd34" or "serverapp"
    tenant_id: str | None = None
    key_id: str | None = None

    @property
    def is_platform_admin(self) -> bool:
        """True for platform admins and the coordinator's own components."""
        return self.role in ("platform_admin", "system")


SYSTEM = Actor(role="system", label="coordinator")


def now_iso() -> str:
    """The current UTC time as stored in the database."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> datetime:
    """Parse a time written by `now_iso`."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def new_id() -> str:
    """A fresh random id (UUID4)."""
    return str(uuid.uuid4())


def looks_like_id(value: str) -> bool:
    """True if `value` could be one of our ids; anything else is simply not found."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError):
        return False


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept; what is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def require_role(actor: Actor, *roles: str, action: str) -> None:
    """Refuse (403) unless the actor has one of `roles` (system components always may)."""
    if actor.role == "system" or actor.role in roles:
        return
    raise ForbiddenError(
        f"A {actor.role.replace('_', ' ')} key may not {action}; this needs a "
        + " or ".join(r.replace("_", " ") for r in roles)
        + " key.",
        code="forbidden",
    )


def require_writer(actor: Actor, *, action: str) -> None:
    """Auditors never write."""
    if actor.role == "auditor":
        raise ForbiddenError(
            f"Auditor keys are read-only and may not {action}.", code="read_only_role"
        )


def not_found(kind: str, ident: str) -> NotFoundError:
    """The one 404 for missing and invisible rows alike."""
    return NotFoundError(f"No {kind} with id {ident!r} exists.", code=f"{kind}_not_found")


def scope_tenant(actor: Actor) -> str | None:
    """The one tenant a reader is confined to: a tenant admin's or a tenant auditor's own.

    None for the platform-wide view (platform admins, the platform auditor, the system)."""
    if actor.role in ("tenant_admin", "auditor"):
        return actor.tenant_id
    return None


def check_tenant_visible(actor: Actor, tenant_id: str | None, kind: str, ident: str) -> None:
    """A tenant-scoped key (tenant admin, tenant auditor) sees only its own tenant's rows;
    others are 'not found'."""
    scope = scope_tenant(actor)
    if scope is not None and tenant_id != scope:
        raise not_found(kind, ident)
