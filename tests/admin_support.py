"""Helpers for the admin-service tests: a real SuperLink, the real app, tenants and keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coordinator.api import AdminSettings, create_app
from coordinator.db import Database
from coordinator.db.tables import Run
from coordinator.fl.journal import (
    EvaluationRecord,
    NodeEvaluation,
    NodeRound,
    RoundRecord,
    RunEnded,
    RunStarted,
)
from coordinator.fl.server_app import save_checkpoint
from coordinator.services.keys import bootstrap_admin_key
from coordinator.services.round_sink import LedgerJournal
from coordinator.superlink import CONNECTION, SuperLink, SuperLinkSettings
from lepton_fl.config import Member, SecureAggregationSpec
from lepton_fl.crypto import create_node_key, create_pki
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.privacy.membership import JOINT_SENSITIVITY, NUM_BINS, MembershipRelease
from lepton_fl.processes import free_port
from lepton_fl.wire import PrivacyCharge

PREFIX = "/api/v1"


def start_superlink(root: Path) -> SuperLink:
    """Start a real flower-superlink with TLS and SuperNode auth on a free port."""
    pki = create_pki(root / "pki", node_names=["seed"], overwrite=True)
    superlink = SuperLink(
        SuperLinkSettings(
            data_dir=root / "coordinator",
            ca_certificate=pki.ca_certificate,
            server_certificate=pki.server_certificate,
            server_key=pki.server_key,
            port=free_port(),
            superlink_port=free_port(),
        )
    )
    superlink.start()
    return superlink


def registered_node_ids(superlink: SuperLink) -> set[int]:
    """Node ids the SuperLink has registered (and not unregistered)."""
    payload = superlink.flwr("supernode", "list", CONNECTION)
    return {
        int(n["node-id"])
        for n in payload.get("nodes", [])
        if "unregistered" not in str(n.get("status", "")).lower()
    }


def new_public_key(directory: Path, name: str) -> str:
    """A fresh OpenSSH EC key pair for a node; returns the public key line."""
    return create_node_key(directory, name).public_key.read_text()


@dataclass
class Tenant:
    """A tenant and its admin's headers."""

    id: str
    name: str
    headers: dict[str, str]


@dataclass
class AdminApi:
    """A TestClient over the real app, with a platform-admin key and helpers."""

    client: TestClient
    db: Database
    data_dir: Path
    admin: dict[str, str]
    keys_dir: Path
    app: FastAPI
    tenants: dict[str, Tenant] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def start(
        cls, data_dir: Path, superlink: SuperLink | None, *, database_url: str | None = None
    ) -> Iterator[AdminApi]:
        settings = AdminSettings(
            data_dir=data_dir,
            database_url=database_url,
            superlink=superlink.settings if superlink else None,
            connect_timeout_s=20.0,  # no nodes here: tests play the ServerApp's part
            round_timeout_s=30.0,
        )
        app = create_app(settings)
        db: Database = app.state.context.db
        _, key = bootstrap_admin_key(db)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield cls(client, db, data_dir, bearer(key), data_dir / "test-keys", app)
        db.dispose()

    # -- requests ---------------------------------------------------------------------------

    def call(
        self, method: str, path: str, headers: dict[str, str] | None, **kwargs: Any
    ) -> httpx.Response:
        return self.client.request(method, PREFIX + path, headers=headers or {}, **kwargs)

    def ok(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
        response = self.call(method, path, headers, **kwargs)
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json() if response.content else None

    # -- setup ------------------------------------------------------------------------------

    def tenant(self, name: str) -> Tenant:
        """A tenant with a tenant-admin key (created once per name)."""
        if name not in self.tenants:
            body = self.ok("POST", "/tenants", self.admin, json={"name": name})
            key = self.ok(
                "POST",
                "/api-keys",
                self.admin,
                json={"role": "tenant_admin", "tenant_id": body["id"], "name": f"{name} it"},
            )
            self.tenants[name] = Tenant(body["id"], name, bearer(key["key"]))
        return self.tenants[name]

    def auditor(self) -> dict[str, str]:
        key = self.ok("POST", "/api-keys", self.admin, json={"role": "auditor"})
        return bearer(key["key"])

    def node(self, tenant: Tenant, name: str, *, epsilon_budget: float = 8.0) -> dict[str, Any]:
        """A pending node of `tenant` (its body includes the enrollment token)."""
        body: dict[str, Any] = self.ok(
            "POST",
            "/nodes",
            tenant.headers,
            json={"name": name, "epsilon_budget": epsilon_budget},
        )
        return body

    def enrolled_node(
        self, tenant: Tenant, name: str, *, epsilon_budget: float = 8.0
    ) -> dict[str, Any]:
        """A node enrolled with a fresh key registered at the real SuperLink."""
        created = self.node(tenant, name, epsilon_budget=epsilon_budget)
        body: dict[str, Any] = self.ok(
            "POST",
            "/nodes/enroll",
            {},
            json={
                "token": created["enrollment_token"],
                "public_key": new_public_key(self.keys_dir, name),
            },
        )
        return body

    def federation(self, name: str, members: list[str], **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "task": "breast_cancer",
            "rounds": 2,
            "min_participants": 3,
            "privacy": {"target_epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
            "members": members,
        }
        body.update(overrides)
        result: dict[str, Any] = self.ok("POST", "/federations", self.admin, json=body)
        return result


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run_row(api: AdminApi, run_id: str) -> Run:
    """The stored run (for its journal path)."""
    with api.db.read() as session:
        run = session.get(Run, run_id)
    assert run is not None
    return run


def play_serverapp(
    api: AdminApi, run_id: str, *, rounds: int = 2, membership_audit: bool = False
) -> None:
    """Write what the ServerApp writes for a run, through its real journal/ledger sink.

    Each member trains every round with the same DP-SGD step; the final model is
    checkpointed beside the journal, as `coordinator.fl.server_app` does. With
    ``membership_audit`` the members then evaluate the final model, each releasing the
    audit's loss histograms with its evaluation and charging the release.
    """
    run = run_row(api, run_id)
    members = [m["name"] for m in json.loads(run.members)]
    journal = LedgerJournal(Path(run.journal_path), db=api.db, run_id=run_id)
    journal.append(
        RunStarted(
            flower_run_id=int(str(run.flower_run_id)),
            federation="played",
            federation_digest="0" * 64,
            rounds=rounds,
            members=tuple(
                Member(name=m["name"], node_id=m["flower_node_id"]) for m in json.loads(run.members)
            ),
            aggregation="fedavg",
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )
    )
    history: list[AccountantStep] = []
    weights = [np.zeros((3, 2), dtype=np.float32), np.ones(2, dtype=np.float32)]
    for rnd in range(1, rounds + 1):
        step = AccountantStep(noise_multiplier=1.1, sample_rate=0.1, steps=20)
        history.append(step)
        epsilon = epsilon_spent(history, delta=1e-5, accountant="rdp")
        charge = PrivacyCharge(
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            delta=1e-5,
            accountant="rdp",
            epsilon=epsilon,
            epsilon_budget=8.0,
        )
        journal.append(
            RoundRecord(
                round=rnd,
                seconds=1.0,
                participants=tuple(members),
                num_examples=100 * len(members),
                nodes={
                    name: NodeRound(status="ok", num_examples=100, charge=charge)
                    for name in members
                },
            )
        )
        weights = [w + 0.1 for w in weights]
        save_checkpoint(Path(run.journal_path).with_name("checkpoint.npz"), weights, rnd)
    if membership_audit:
        journal.append(_played_evaluation(members, history, rounds))
    journal.append(RunEnded(state="finished", rounds_completed=rounds))


def _played_evaluation(
    members: list[str], history: list[AccountantStep], rnd: int
) -> EvaluationRecord:
    """Every member's evaluation release with the membership audit (one step at sigma 4)."""
    step = AccountantStep(noise_multiplier=4.0, sample_rate=1.0, steps=1)
    epsilon = epsilon_spent([*history, step], delta=1e-5, accountant="rdp")
    charge = PrivacyCharge(
        noise_multiplier=4.0,
        sample_rate=1.0,
        steps=1,
        delta=1e-5,
        accountant="rdp",
        epsilon=epsilon,
        epsilon_budget=8.0,
    )
    nodes = {
        name: NodeEvaluation(
            status="ok",
            epsilon=epsilon,
            epsilon_budget=8.0,
            charge=charge,
            membership=MembershipRelease(
                members=_counts(40 + i, 30, 12, 4, 1),
                nonmembers=_counts(8, 9, 6, -2, 1 + i),  # noised counts may be negative
                noise_std=4.0 * JOINT_SENSITIVITY,
            ),
        )
        for i, name in enumerate(members)
    }
    return EvaluationRecord(round=rnd, nodes=nodes)


def _counts(*values: int) -> tuple[int, ...]:
    """``values`` fitted to the membership audit's bins."""
    return (values + (0,) * NUM_BINS)[:NUM_BINS]
