"""API keys: created with a random secret, stored only as an argon2 hash, revocable.

A key reads `lfk_<prefix>_<secret>`; the 8-character prefix is not secret and is how keys
are listed and looked up, the secret is checked against the argon2 hash. Argon2 is slow on
purpose (tens of milliseconds), so a verified key is cached in this process, keyed by the
SHA-256 of the presented key: for `CACHE_TTL_S` seconds it is trusted as is, then it is
re-checked with one indexed read (revoked? tenant disabled?) instead of argon2. Revoking a
key or disabling a tenant clears the cache of the process that did it at once; another
process serving the same database (a second API worker) sees the change within
`CACHE_TTL_S`.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import ApiKey, Tenant
from coordinator.services import audit
from coordinator.services.common import (
    SYSTEM,
    Actor,
    Role,
    check_tenant_visible,
    looks_like_id,
    new_id,
    not_found,
    now_iso,
    require_role,
    require_writer,
)
from coordinator.services.errors import ForbiddenError, InvalidError, UnauthenticatedError

KEY_SCHEME = "lfk"
PREFIX_LENGTH = 8
CACHE_TTL_S = 10.0
_ALPHABET = string.ascii_lowercase + string.digits
#: argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): slow enough to make
#: guessing costly, fast enough (tens of ms) not to stall an API worker on a cache miss.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


class _VerifiedKeyCache:
    """Keys this process has verified with argon2, by SHA-256 of the presented key.

    `fresh` entries (checked less than CACHE_TTL_S ago) are trusted outright. After that, a
    key that was verified once is re-checked against the database (revoked? tenant
    disabled?) with one indexed read, not argon2 again: the SHA-256 already proves it is the
    same key. Clearing the cache (a revocation, a disabled tenant) forgets both.
    """

    def __init__(self) -> None:
        self._fresh: dict[str, tuple[Actor, float]] = {}
        self._verified: dict[str, str] = {}  # digest -> key id
        self._lock = threading.Lock()

    def get(self, digest: str) -> Actor | None:
        entry = self._fresh.get(digest)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def verified_key_id(self, digest: str) -> str | None:
        return self._verified.get(digest)

    def put(self, digest: str, actor: Actor) -> None:
        with self._lock:
            if len(self._verified) > 10_000:
                self._fresh.clear()
                self._verified.clear()
            self._fresh[digest] = (actor, time.monotonic() + CACHE_TTL_S)
            if actor.key_id is not None:
                self._verified[digest] = actor.key_id

    def clear(self) -> None:
        with self._lock:
            self._fresh.clear()
            self._verified.clear()


_CACHE = _VerifiedKeyCache()


def invalidate_cache() -> None:
    """Forget every verified key (after a revocation or a tenant is disabled)."""
    _CACHE.clear()


def _generate() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_LENGTH))
    return prefix, f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"


def create_key(
    db: Database,
    actor: Actor,
    *,
    role: Role,
    tenant_id: str | None = None,
    name: str = "",
) -> tuple[ApiKey, str]:
    """Create a key; return its row and the full key, which is never shown again.

    A tenant-admin key belongs to a tenant; an auditor key may (a tenant auditor reads only
    that tenant, `common.scope_tenant`) or may not (the platform auditor); a platform-admin
    key never does. A tenant admin may create tenant-admin and auditor keys for its own
    tenant only (never a platform auditor): that is safe because an auditor key is
    read-only and confined to the same tenant; all it adds is reading the audit events
    about that tenant.
    """
    require_writer(actor, action="create API keys")
    require_role(actor, "platform_admin", "tenant_admin", action="create API keys")
    if actor.role == "tenant_admin":
        if role not in ("tenant_admin", "auditor"):
            raise ForbiddenError(
                "A tenant admin may create only tenant-admin and auditor keys for its own tenant.",
                code="forbidden",
            )
        tenant_id = tenant_id or actor.tenant_id
        check_tenant_visible(actor, tenant_id, "tenant", str(tenant_id))
    if role == "tenant_admin" and tenant_id is None:
        raise InvalidError("A tenant-admin key needs a tenant_id.", code="tenant_required")
    if role == "platform_admin" and tenant_id is not None:
        raise InvalidError(
            "A platform-admin key belongs to no tenant; leave tenant_id out.",
            code="tenant_not_allowed",
        )
    prefix, full = _generate()
    with db.write() as session:
        if tenant_id is not None:
            tenant = session.get(Tenant, tenant_id) if looks_like_id(tenant_id) else None
            if tenant is None:
                raise not_found("tenant", tenant_id)
            if tenant.disabled:
                raise InvalidError(
                    f"Tenant {tenant.name} is disabled; its keys would not work.",
                    code="tenant_disabled",
                )
        row = ApiKey(
            id=new_id(),
            prefix=prefix,
            key_hash=_HASHER.hash(full),
            role=role,
            tenant_id=tenant_id,
            name=name,
            created_at=now_iso(),
            created_by=actor.label,
        )
        session.add(row)
        audit.append_event(
            session,
            actor,
            "api_key.create",
            f"api_key:{row.id}",
            {"prefix": prefix, "role": role, "tenant_id": tenant_id, "name": name},
        )
    return row, full


def bootstrap_admin_key(db: Database, *, name: str = "bootstrap") -> tuple[ApiKey, str]:
    """The first platform-admin key, created from the coordinator host's command line."""
    return create_key(db, SYSTEM, role="platform_admin", name=name)


def _digest(presented: str) -> str:
    return hashlib.sha256(presented.encode("utf-8", "replace")).hexdigest()


def cached_actor(presented: str) -> Actor | None:
    """The actor of a key verified less than CACHE_TTL_S ago, without touching the database."""
    return _CACHE.get(_digest(presented))


def authenticate(db: Database, presented: str) -> Actor:
    """The actor a presented key stands for; 401 for anything that is not a live key."""
    digest = _digest(presented)
    cached = _CACHE.get(digest)
    if cached is not None:
        return cached
    known_id = _CACHE.verified_key_id(digest)
    if known_id is not None:
        row = db.fetch(ApiKey, known_id)
        if row is None:
            raise UnauthenticatedError("The API key is not valid.", code="invalid_api_key")
    else:
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != PREFIX_LENGTH:
            raise UnauthenticatedError(
                "The API key is malformed; keys look like lfk_<prefix>_<secret>.",
                code="invalid_api_key",
            )
        with db.read() as session:
            row = session.exec(select(ApiKey).where(ApiKey.prefix == parts[1])).first()
        if row is None or not _verify(row.key_hash, presented):
            raise UnauthenticatedError("The API key is not valid.", code="invalid_api_key")
    if row.revoked_at is not None:
        raise UnauthenticatedError(
            f"The API key {row.prefix} was revoked at {row.revoked_at}.", code="revoked_api_key"
        )
    tenant = db.fetch(Tenant, row.tenant_id) if row.tenant_id else None
    if tenant is not None and tenant.disabled:
        raise UnauthenticatedError(
            f"The tenant {tenant.name} of this key is disabled.", code="tenant_disabled"
        )
    actor = Actor(
        role=row.role,  # type: ignore[arg-type]
        label=f"key:{row.prefix}",
        tenant_id=row.tenant_id,
        key_id=row.id,
    )
    _CACHE.put(digest, actor)
    return actor


def _verify(key_hash: str, presented: str) -> bool:
    try:
        return _HASHER.verify(key_hash, presented)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def list_keys(db: Database, actor: Actor) -> list[ApiKey]:
    """Keys by prefix: all for a platform admin, its own tenant's for a tenant admin."""
    require_role(actor, "platform_admin", "tenant_admin", action="list API keys")
    with db.read() as session:
        query = select(ApiKey).order_by(col(ApiKey.created_at))
        if actor.role == "tenant_admin":
            query = query.where(ApiKey.tenant_id == actor.tenant_id)
        return list(session.exec(query).all())


def revoke_key(db: Database, actor: Actor, key_id: str) -> ApiKey:
    """Revoke a key; it stops working at once in this process."""
    require_writer(actor, action="revoke API keys")
    require_role(actor, "platform_admin", "tenant_admin", action="revoke API keys")
    with db.write() as session:
        row = session.get(ApiKey, key_id) if looks_like_id(key_id) else None
        if row is None:
            raise not_found("api_key", key_id)
        check_tenant_visible(actor, row.tenant_id, "api_key", key_id)
        if row.revoked_at is None:
            row.revoked_at = now_iso()
            session.add(row)
            audit.append_event(
                session, actor, "api_key.revoke", f"api_key:{row.id}", {"prefix": row.prefix}
            )
    invalidate_cache()
    return row
