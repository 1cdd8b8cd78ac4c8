"""Releases: publish, list, get, download, verify, grant; the public signing key."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response, status
from fastapi.responses import FileResponse

from coordinator.api.deps import CallerDep, ContextDep
from coordinator.api.routes import ERRORS
from coordinator.api.schemas import (
    ErrorOut,
    GrantIn,
    GrantOut,
    ReleaseIn,
    ReleaseOut,
    ReleaseVerdictOut,
    SigningKeyOut,
)
from coordinator.services import releases
from lepton_fl.crypto.release import public_key_fingerprint, public_key_pem

router = APIRouter(tags=["releases"], responses=ERRORS)


@router.get("/signing-key", response_model=SigningKeyOut)
async def signing_key(ctx: ContextDep) -> SigningKeyOut:
    """The coordinator's Ed25519 public key that signs release manifests (no key needed)."""
    pem = public_key_pem(ctx.signing_key)
    return SigningKeyOut(
        algorithm="ed25519", public_key_pem=pem, fingerprint=public_key_fingerprint(pem)
    )


@router.post(
    "/runs/{run_id}/releases", response_model=ReleaseOut, status_code=status.HTTP_201_CREATED
)
def create_release(run_id: str, body: ReleaseIn, caller: CallerDep) -> ReleaseOut:
    """Promote a finished run's final model to the federation's next release (platform admin)."""
    return ReleaseOut.of(
        releases.create_release(
            caller.ctx.db,
            caller.actor,
            run_id,
            releases_dir=caller.ctx.settings.releases_dir,
            signing_key=caller.ctx.signing_key,
            grant_tenant_ids=body.grant_tenant_ids,
        )
    )


@router.get("/releases", response_model=list[ReleaseOut])
def list_releases(caller: CallerDep) -> list[ReleaseOut]:
    """Releases this key may see."""
    return [ReleaseOut.of(r) for r in releases.list_releases(caller.ctx.db, caller.actor)]


@router.get("/releases/{release_id}", response_model=ReleaseOut)
async def get_release(release_id: str, caller: CallerDep) -> ReleaseOut:
    """One release with its signed manifest."""
    return ReleaseOut.of(releases.get_release(caller.ctx.db, caller.actor, release_id))


@router.get(
    "/releases/{release_id}/manifest",
    responses={200: {"content": {"application/json": {}}, "description": "manifest.json"}},
)
def download_manifest(release_id: str, caller: CallerDep) -> Response:
    """The signed manifest, exactly as in the release's manifest.json."""
    release = releases.get_release(caller.ctx.db, caller.actor, release_id)
    body = json.dumps(json.loads(release.signed_manifest), indent=2, sort_keys=True)
    return Response(body, media_type="application/json")


@router.get(
    "/releases/{release_id}/model",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "model.safetensors"},
        403: {"model": ErrorOut},
    },
)
def download_model(release_id: str, caller: CallerDep) -> FileResponse:
    """The model weights (safetensors), for permitted tenants and platform admins."""
    path = releases.model_path(caller.ctx.db, caller.actor, release_id)
    return FileResponse(path, media_type="application/octet-stream", filename="model.safetensors")


@router.get("/releases/{release_id}/verification", response_model=ReleaseVerdictOut)
def verify_release(release_id: str, caller: CallerDep) -> ReleaseVerdictOut:
    """Verify the stored release: the manifest's signature and the model's digest."""
    verdict = releases.verify_stored_release(
        caller.ctx.db, caller.actor, release_id, signing_key=caller.ctx.signing_key
    )
    return ReleaseVerdictOut(**verdict.__dict__)


@router.post(
    "/releases/{release_id}/grants", response_model=GrantOut, status_code=status.HTTP_201_CREATED
)
def grant_release(release_id: str, body: GrantIn, caller: CallerDep) -> GrantOut:
    """Allow another tenant to download a release (platform admin)."""
    grant = releases.grant_release(caller.ctx.db, caller.actor, release_id, body.tenant_id)
    return GrantOut.model_validate(grant.model_dump())
