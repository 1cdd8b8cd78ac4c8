"""A small typed client of the coordinator's admin API (docs/admin-api.md).

It speaks only HTTP to `/api/v1` and knows nothing of the service's internals: what it gets
back is parsed into the few fields its callers (the demo) read. Every failed call, refused or
unreachable, becomes an `AdminApiError` that names the call, the HTTP status and the API's
own `code` and `message`, so the CLI can print it as one paragraph and exit 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

TIMEOUT_S = 120.0  # enrolling a node and starting a run call the `flwr` CLI server-side


class AdminApiError(RuntimeError):
    """An admin API call failed; `code` is the API's error code (or how the call failed)."""

    def __init__(
        self, call: str, message: str, *, status: int | None = None, code: str = "admin_api"
    ) -> None:
        where = f"HTTP {status}, {code}" if status is not None else code
        super().__init__(f"The admin API call {call} failed ({where}): {message}")
        self.call = call
        self.status = status
        self.code = code


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Tenant(_Out):
    id: str
    name: str


class CreatedNode(_Out):
    id: str
    name: str
    enrollment_token: str


class EnrolledNode(_Out):
    id: str
    name: str
    tenant_id: str
    flower_node_id: str
    coordinator_public_key_pem: str | None = None  # pin it: node.toml [coordinator] public_key


class Federation(_Out):
    id: str
    name: str
    digest: str


class RunStatus(_Out):
    id: str
    state: str
    flower_run_id: str | None
    rounds_planned: int
    rounds_completed: int
    failure: str | None

    @property
    def ended(self) -> bool:
        """True once the run is finished, failed or stopped."""
        return self.state in ("finished", "failed", "stopped")


class RoundStatus(_Out):
    round: int
    participants: list[str]
    refusals: dict[str, str]
    num_examples: int
    train_loss: float | None
    seconds: float | None


class NodeLedger(_Out):
    node_id: str
    node_name: str
    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    epsilon_reported: float | None
    history: list[dict[str, Any]]


class Mismatch(_Out):
    flower_run_id: str
    round: int
    problem: str


class Reconciliation(_Out):
    ok: bool
    mismatches: list[Mismatch]
    repaired: list[Mismatch] = []


class Release(_Out):
    id: str
    run_id: str
    version: int
    model_digest: str


class AuditVerdict(_Out):
    ok: bool
    events_checked: int
    first_broken_seq: int | None
    reason: str | None


class AdminClient:
    """Calls of the admin API as one key (or none: enrollment and the signing key)."""

    def __init__(self, http: httpx.Client, api_key: str | None = None) -> None:
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @classmethod
    @contextmanager
    def connect(cls, base_url: str, *, timeout: float = TIMEOUT_S) -> Iterator[AdminClient]:
        """An anonymous client; `as_key` gives clients that share its connections."""
        with httpx.Client(base_url=base_url, timeout=timeout) as http:
            yield cls(http)

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return str(self._http.base_url).rstrip("/")

    def as_key(self, api_key: str) -> AdminClient:
        """The same connection, acting with another API key."""
        return AdminClient(self._http, api_key)

    def anonymous(self) -> AdminClient:
        """The same connection, without a key (a node enrolling, anyone reading the key)."""
        return AdminClient(self._http)

    # -- tenants, keys, nodes --------------------------------------------------------------

    def create_tenant(self, name: str, *, display_name: str = "") -> Tenant:
        body = {"name": name, "display_name": display_name}
        return Tenant.model_validate(self._json("POST", "/tenants", json=body))

    def create_api_key(self, role: str, *, tenant_id: str | None = None, name: str = "") -> str:
        """A new API key; the full key is returned (it is shown only once)."""
        body = {"role": role, "tenant_id": tenant_id, "name": name}
        return str(self._json("POST", "/api-keys", json=body)["key"])

    def create_node(self, name: str, *, epsilon_budget: float) -> CreatedNode:
        body = {"name": name, "epsilon_budget": epsilon_budget}
        return CreatedNode.model_validate(self._json("POST", "/nodes", json=body))

    def enroll(self, token: str, public_key: str) -> EnrolledNode:
        """The node's own call: its one-time token and its OpenSSH public key."""
        body = {"token": token, "public_key": public_key}
        return EnrolledNode.model_validate(self._json("POST", "/nodes/enroll", json=body))

    # -- federations and runs --------------------------------------------------------------

    def create_federation(self, definition: dict[str, Any], members: list[str]) -> Federation:
        body = {**definition, "members": members}
        return Federation.model_validate(self._json("POST", "/federations", json=body))

    def start_run(self, federation_id: str) -> RunStatus:
        path = f"/federations/{federation_id}/runs"
        return RunStatus.model_validate(self._json("POST", path))

    def run(self, run_id: str) -> RunStatus:
        return RunStatus.model_validate(self._json("GET", f"/runs/{run_id}"))

    def rounds(self, run_id: str) -> list[RoundStatus]:
        rows = self._json("GET", f"/runs/{run_id}/rounds")
        return [RoundStatus.model_validate(r) for r in rows]

    # -- ledger ----------------------------------------------------------------------------

    def node_ledger(self, node_id: str) -> NodeLedger:
        return NodeLedger.model_validate(self._json("GET", f"/ledger/nodes/{node_id}"))

    def reconcile(
        self, node_id: str, rows: list[dict[str, Any]], *, repair: bool = False
    ) -> Reconciliation:
        """Compare the coordinator's ledger with rows of the node's own ledger; with
        ``repair``, record the node's charges the coordinator lacks (not aggregated)."""
        path = f"/ledger/nodes/{node_id}/reconcile"
        body = {"entries": rows, "repair": repair}
        return Reconciliation.model_validate(self._json("POST", path, json=body))

    # -- releases and audit ----------------------------------------------------------------

    def create_release(self, run_id: str) -> Release:
        path = f"/runs/{run_id}/releases"
        return Release.model_validate(self._json("POST", path, json={}))

    def download_model(self, release_id: str) -> bytes:
        return self._call("GET", f"/releases/{release_id}/model").content

    def download_manifest(self, release_id: str) -> str:
        """The signed manifest, exactly as served (manifest.json)."""
        return self._call("GET", f"/releases/{release_id}/manifest").text

    def signing_key(self) -> str:
        """The coordinator's Ed25519 public key (PEM) that signs release manifests."""
        return str(self._json("GET", "/signing-key")["public_key_pem"])

    def audit_verification(self) -> AuditVerdict:
        return AuditVerdict.model_validate(self._json("GET", "/audit/verification"))

    def privacy_report(
        self,
        *,
        tenant_id: str | None = None,
        federation_id: str | None = None,
        release_id: str | None = None,
    ) -> dict[str, Any]:
        """The signed privacy report: ``{"report": {...}, "signature": {...}}``."""
        params = {
            k: v
            for k, v in (
                ("tenant_id", tenant_id),
                ("federation_id", federation_id),
                ("release_id", release_id),
            )
            if v is not None
        }
        body: dict[str, Any] = self._json("GET", "/reports/privacy", params=params)
        return body

    # -- transport -------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            raise AdminApiError(
                f"{method} {path}",
                f"the response is not JSON ({response.text[:200]!r})",
                status=response.status_code,
                code="bad_response",
            ) from err

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        call = f"{method} {path}"
        try:
            response = self._http.request(method, path, headers=self._headers, **kwargs)
        except httpx.HTTPError as err:
            raise AdminApiError(
                call,
                f"{type(err).__name__}: {err}. Is the coordinator running and serving its admin "
                f"API at {self.base_url}?",
                code="admin_api_unreachable",
            ) from err
        if response.status_code >= 400:
            raise _refused(call, response)
        return response


def _refused(call: str, response: httpx.Response) -> AdminApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        message = str(body.get("message", "")).strip() or "no message"
        if body.get("field"):
            message += f" (field: {body['field']})"
        return AdminApiError(call, message, status=response.status_code, code=str(body["code"]))
    return AdminApiError(
        call,
        response.text[:300].strip() or response.reason_phrase,
        status=response.status_code,
        code="admin_api_error",
    )
