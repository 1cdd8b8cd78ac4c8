"""A small client of the coordinator's admin API, for the demo, tests and scripts.

Every call returns the decoded JSON; any error response raises `AdminApiError` with the
API's stable `code`, its message and the HTTP status.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx


class AdminApiError(RuntimeError):
    """The admin API refused a request (or could not be reached)."""

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class AdminClient:
    """One API key against one coordinator's admin API (`http://HOST:PORT/api/v1`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60,
        http: httpx.Client | None = None,
    ) -> None:
        """`http` replaces the connection (for example FastAPI's TestClient in tests)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        if http is not None:
            self._http.base_url = httpx.URL(base_url)
            self._http.headers.update(headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return its JSON (or raw bytes for non-JSON bodies)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise AdminApiError(
                f"The admin API at {self._http.base_url} cannot be reached: {err}.",
                code="api_unreachable",
            ) from err
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise AdminApiError(
                f"{method} {path} failed ({response.status_code}): "
                f"{body.get('message', response.text)}",
                code=str(body.get("code", "http_error")),
                status=response.status_code,
            )
        if response.status_code == 204:
            return None
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.content

    # -- platform ---------------------------------------------------------------------------

    def create_tenant(self, name: str) -> dict[str, Any]:
        """A new tenant."""
        result: dict[str, Any] = self.request("POST", "/tenants", json={"name": name})
        return result

    def create_key(self, role: str, *, tenant_id: str | None = None) -> str:
        """A new API key (the full key, shown only now)."""
        body = self.request("POST", "/api-keys", json={"role": role, "tenant_id": tenant_id})
        return str(body["key"])

    def create_node(
        self, name: str, *, epsilon_budget: float, tenant_id: str | None = None
    ) -> dict[str, Any]:
        """A pending node; the result carries its one-time `enrollment_token`."""
        body = {"name": name, "epsilon_budget": epsilon_budget, "tenant_id": tenant_id}
        result: dict[str, Any] = self.request("POST", "/nodes", json=body)
        return result

    def enroll(self, token: str, public_key: Path) -> dict[str, Any]:
        """The node's side: enroll with the token and the OpenSSH public key file."""
        body = {"token": token, "public_key": public_key.read_text(encoding="utf-8")}
        result: dict[str, Any] = self.request("POST", "/nodes/enroll", json=body)
        return result

    def create_federation(self, definition: dict[str, Any]) -> dict[str, Any]:
        """A federation (see the API's FederationIn schema)."""
        result: dict[str, Any] = self.request("POST", "/federations", json=definition)
        return result

    def start_run(self, federation_id: str) -> dict[str, Any]:
        """Start a run of a federation."""
        result: dict[str, Any] = self.request("POST", f"/federations/{federation_id}/runs")
        return result

    def run(self, run_id: str) -> dict[str, Any]:
        """A run's status."""
        result: dict[str, Any] = self.request("GET", f"/runs/{run_id}")
        return result

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """A run's rounds."""
        result: list[dict[str, Any]] = self.request("GET", f"/runs/{run_id}/rounds")
        return result

    def wait_for_run(self, run_id: str, *, timeout: float, poll: float = 1.0) -> dict[str, Any]:
        """Poll a run until it ends (finished, failed or stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["state"] not in ("submitted", "running"):
                return run
            if time.monotonic() > deadline:
                raise AdminApiError(
                    f"Run {run_id} is still {run['state']} after {timeout:.0f} s.",
                    code="run_timeout",
                )
            time.sleep(poll)

    def node_ledger(self, node_id: str) -> dict[str, Any]:
        """A node's ledger: budget, spent, remaining, history."""
        result: dict[str, Any] = self.request("GET", f"/ledger/nodes/{node_id}")
        return result

    def reconcile(self, node_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Compare the coordinator's ledger of a node with rows of the node's own ledger."""
        result: dict[str, Any] = self.request(
            "POST", f"/ledger/nodes/{node_id}/reconcile", json={"entries": entries}
        )
        return result

    def create_release(self, run_id: str) -> dict[str, Any]:
        """Release a finished run's final model."""
        result: dict[str, Any] = self.request("POST", f"/runs/{run_id}/releases", json={})
        return result

    def verify_release(self, release_id: str) -> dict[str, Any]:
        """The coordinator's verification of a stored release."""
        result: dict[str, Any] = self.request("GET", f"/releases/{release_id}/verification")
        return result

    def audit_verification(self) -> dict[str, Any]:
        """The audit chain's verification."""
        result: dict[str, Any] = self.request("GET", "/audit/verification")
        return result
