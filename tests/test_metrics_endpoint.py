"""`GET /metrics` of the admin service, against the real app, a real SQLite file and a real
SuperLink: the ledger's epsilon gauges equal the API's ledger (and follow the database, not a
cache), the round series count what the run journals recorded, an outsider gets nothing, a
tenant-scoped key sees only its own tenant, the per-node labels can be turned off, and the
request latency is labelled by route template."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from admin_support import AdminApi, Tenant, bearer, play_serverapp, run_row
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from coordinator.api import AdminSettings, create_app
from coordinator.db.tables import RunRound
from coordinator.fl.journal import NodeRound, RoundRecord, RunEnded, RunStarted
from coordinator.services.metrics import round_facts
from coordinator.services.round_sink import LedgerJournal
from coordinator.superlink import SuperLink
from lepton_fl.config import Member, SecureAggregationSpec
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.wire import PrivacyCharge

STEP = AccountantStep(noise_multiplier=1.1, sample_rate=0.1, steps=20)


@dataclass
class World:
    api: AdminApi
    a: Tenant
    b: Tenant
    a_nodes: list[dict[str, Any]]
    b_nodes: list[dict[str, Any]]
    runs: dict[str, str]
    platform_auditor: dict[str, str]
    auditor_a: dict[str, str]


def _charge(history: list[AccountantStep]) -> PrivacyCharge:
    return PrivacyCharge(
        noise_multiplier=STEP.noise_multiplier,
        sample_rate=STEP.sample_rate,
        steps=STEP.steps,
        delta=1e-5,
        accountant="rdp",
        epsilon=epsilon_spent(history, delta=1e-5, accountant="rdp"),
        epsilon_budget=8.0,
    )


def _journal(api: AdminApi, run_id: str) -> tuple[LedgerJournal, list[str]]:
    run = run_row(api, run_id)
    members = json.loads(run.members)
    journal = LedgerJournal(Path(run.journal_path), db=api.db, run_id=run_id)
    journal.append(
        RunStarted(
            flower_run_id=int(str(run.flower_run_id)),
            federation="played",
            federation_digest="0" * 64,
            rounds=3,
            members=tuple(Member(name=m["name"], node_id=m["flower_node_id"]) for m in members),
            aggregation="fedavg",
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )
    )
    return journal, [m["name"] for m in members]


def play_mixed_run(api: AdminApi, run_id: str) -> None:
    """Round 1: all three take part (4.0 s). Round 2: the second member refuses (its
    budget) and the third drops out (no reply) (7.5 s). The run then ends."""
    journal, (first, second, third) = _journal(api, run_id)
    history = [STEP]
    journal.append(
        RoundRecord(
            round=1,
            seconds=4.0,
            participants=(first, second, third),
            num_examples=300,
            nodes={
                n: NodeRound(status="ok", num_examples=100, charge=_charge(history))
                for n in (first, second, third)
            },
        )
    )
    journal.append(
        RoundRecord(
            round=2,
            seconds=7.5,
            participants=(first,),
            num_examples=100,
            nodes={
                first: NodeRound(status="ok", num_examples=100, charge=_charge([STEP, STEP])),
                second: NodeRound(
                    status="refused", code="budget_exhausted", reason="The budget is spent."
                ),
                third: NodeRound(status="dropped", code="no_reply", reason="No answer."),
            },
        )
    )
    journal.append(RunEnded(state="finished", rounds_completed=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("metrics")
    with AdminApi.start(root / "coordinator", superlink) as api:
        a, b = api.tenant("clinic-a"), api.tenant("clinic-b")
        a_nodes = [api.enrolled_node(a, f"ma-site-{i}") for i in range(3)]
        b_nodes = [api.enrolled_node(b, f"mb-site-{i}", epsilon_budget=10.0) for i in range(3)]
        runs: dict[str, str] = {}
        fed_b = api.federation("metrics-b", [n["id"] for n in b_nodes])
        runs["b"] = api.ok("POST", f"/federations/{fed_b['id']}/runs", api.admin)["id"]
        play_serverapp(api, runs["b"])
        mixed = [a_nodes[0]["id"], b_nodes[0]["id"], b_nodes[1]["id"]]
        fed_mixed = api.federation("metrics-mixed", mixed)
        runs["mixed"] = api.ok("POST", f"/federations/{fed_mixed['id']}/runs", api.admin)["id"]
        play_mixed_run(api, runs["mixed"])
        auditor_a = api.ok(
            "POST", "/api-keys", api.admin, json={"role": "auditor", "tenant_id": a.id}
        )["key"]
        yield World(api, a, b, a_nodes, b_nodes, runs, api.auditor(), bearer(auditor_a))


def scrape(client: TestClient, headers: dict[str, str]) -> list[Sample]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def values(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


def one(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


# -- the privacy ledger ---------------------------------------------------------------------


def test_epsilon_gauges_equal_the_api_ledger(world: World) -> None:
    api = world.api
    samples = scrape(api.client, api.admin)
    overview = api.ok("GET", "/ledger", api.admin)
    names = {n["id"]: n["name"] for n in world.a_nodes + world.b_nodes}
    tenants = {world.a.id: world.a.name, world.b.id: world.b.name}

    assert len(overview) == 6
    for node in overview:
        labels = {"tenant": tenants[node["tenant_id"]], "node": names[node["node_id"]]}
        assert one(samples, "lepton_ledger_epsilon_spent", **labels) == node["epsilon_spent"]
        assert (
            one(samples, "lepton_ledger_epsilon_remaining", **labels) == node["epsilon_remaining"]
        )
        assert one(samples, "lepton_ledger_epsilon_budget", **labels) == node["epsilon_budget"]
        for spend in node["federations"]:
            by_fed = {**labels, "federation": spend["federation_name"]}
            assert (
                one(samples, "lepton_ledger_federation_epsilon_spent", **by_fed)
                == (spend["epsilon"])
            )
    spent = values(samples, "lepton_ledger_epsilon_spent")
    assert sum(1 for v in spent.values() if v > 0) == 4  # a1 and a2 never trained
    assert one(samples, "lepton_ledger_nodes", tenant="clinic-a") == 3
    assert one(samples, "lepton_ledger_unaccountable_nodes", tenant="clinic-b") == 0


def test_epsilon_is_read_from_the_database_at_each_scrape(
    tmp_path: Path, superlink: SuperLink
) -> None:
    with AdminApi.start(tmp_path / "coordinator", superlink) as api:
        tenant = api.tenant("fresh")
        nodes = [api.enrolled_node(tenant, f"fresh-{i}") for i in range(3)]
        federation = api.federation("fresh-fed", [n["id"] for n in nodes])
        run_id = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)["id"]
        journal, members = _journal(api, run_id)
        labels = {"tenant": "fresh", "node": "fresh-0"}
        assert one(scrape(api.client, api.admin), "lepton_ledger_epsilon_spent", **labels) == 0

        history: list[AccountantStep] = []
        seen = []
        for rnd in (1, 2):
            history.append(STEP)
            journal.append(
                RoundRecord(
                    round=rnd,
                    seconds=1.0,
                    participants=tuple(members),
                    num_examples=300,
                    nodes={n: NodeRound(status="ok", charge=_charge(history)) for n in members},
                )
            )
            seen.append(one(scrape(api.client, api.admin), "lepton_ledger_epsilon_spent", **labels))
            ledger = api.ok("GET", f"/ledger/nodes/{nodes[0]['id']}", api.admin)
            assert seen[-1] == ledger["epsilon_spent"]
            assert seen[-1] == epsilon_spent(history, delta=1e-5, accountant="rdp")
        assert 0 < seen[0] < seen[1]


def test_node_labels_can_be_turned_off(world: World) -> None:
    api = world.api
    settings = AdminSettings(data_dir=api.data_dir, metrics_node_labels=False)
    app = create_app(settings, database=api.db, upgrade=False)
    overview = api.ok("GET", "/ledger", api.admin)
    b_ids = {n["id"] for n in world.b_nodes}

    with TestClient(app) as client:
        samples = scrape(client, api.admin)

    assert not any("node" in s.labels for s in samples if s.name.startswith("lepton_ledger"))
    b_rows = [n for n in overview if n["node_id"] in b_ids]
    assert one(samples, "lepton_ledger_epsilon_spent", tenant="clinic-b") == max(
        n["epsilon_spent"] for n in b_rows
    )
    assert one(samples, "lepton_ledger_epsilon_remaining", tenant="clinic-b") == min(
        n["epsilon_remaining"] for n in b_rows
    )
    assert values(samples, "lepton_ledger_epsilon_budget") == {}
    names = {n["name"] for n in world.a_nodes + world.b_nodes}
    text = client_text(app, api.admin)
    assert not any(name in text for name in names)


def client_text(app: Any, headers: dict[str, str]) -> str:
    with TestClient(app) as client:
        return client.get("/metrics", headers=headers).text


# -- runs and rounds ------------------------------------------------------------------------


def test_round_series_count_what_the_journals_recorded(world: World) -> None:
    samples = scrape(world.api.client, world.platform_auditor)

    assert one(samples, "lepton_runs", federation="metrics-mixed", state="finished") == 1
    assert one(samples, "lepton_runs", federation="metrics-mixed", state="running") == 0
    mixed = {"federation": "metrics-mixed"}
    assert one(samples, "lepton_round_duration_seconds_count", **mixed) == 2
    assert one(samples, "lepton_round_duration_seconds_sum", **mixed) == 11.5
    assert one(samples, "lepton_round_duration_seconds_bucket", le="5.0", **mixed) == 1
    assert one(samples, "lepton_round_duration_seconds_bucket", le="10.0", **mixed) == 2
    assert one(samples, "lepton_round_participants_sum", **mixed) == 4  # 3 + 1
    assert one(samples, "lepton_round_participants_bucket", le="1.0", **mixed) == 1
    assert one(samples, "lepton_round_dropouts_sum", **mixed) == 1
    assert one(samples, "lepton_round_last_participants", **mixed) == 1
    assert one(samples, "lepton_round_last_dropouts", **mixed) == 1
    assert one(samples, "lepton_round_participants_sum", federation="metrics-b") == 6
    refusals = values(samples, "lepton_round_refusals_total")
    assert refusals == {
        (
            ("code", "budget_exhausted"),
            ("federation", "metrics-mixed"),
            ("status", "refused"),
            ("tenant", "clinic-b"),
        ): 1,
        (
            ("code", "no_reply"),
            ("federation", "metrics-mixed"),
            ("status", "dropped"),
            ("tenant", "clinic-b"),
        ): 1,
    }


# -- who may scrape, and what they see -----------------------------------------------------


def test_an_outsider_gets_nothing(world: World) -> None:
    """No key, a made-up key, a node's enrollment token, a revoked key: 401, no series."""
    api = world.api
    pending = api.node(world.a, "metrics-pending")
    revoked = api.ok("POST", "/api-keys", api.admin, json={"role": "auditor"})
    api.ok("POST", f"/api-keys/{revoked['id']}/revoke", api.admin)
    prefix = revoked["key"].split("_")[1]

    for headers in (
        {},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        bearer(""),
        bearer(f"lfk_{prefix}_{'x' * 40}"),  # a real prefix, a guessed secret
        bearer(pending["enrollment_token"]),  # what a node holds
        bearer(revoked["key"]),
    ):
        response = api.client.get("/metrics", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert "lepton_" not in response.text
        assert response.json()["code"] in ("unauthenticated", "invalid_api_key", "revoked_api_key")


def test_a_tenant_key_sees_only_its_own_tenant(world: World) -> None:
    api = world.api
    everything = client_text(api.app, api.admin)
    b_secrets = {world.b.name, "metrics-b"} | {n["name"] for n in world.b_nodes}
    assert all(s in everything for s in b_secrets)  # the check can fail
    a_names = {n["name"] for n in world.api.ok("GET", "/nodes", world.a.headers)}

    for key in (world.a.headers, world.auditor_a):
        text = client_text(api.app, key)
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

        leaked = {s for s in b_secrets if s in text}
        assert not leaked, leaked
        assert {s.labels["tenant"] for s in samples if "tenant" in s.labels} == {"clinic-a"}
        assert {s.labels["node"] for s in samples if "node" in s.labels} == a_names
        # the mixed run is A's too: its rounds, with B's members only as counts
        assert one(samples, "lepton_round_participants_sum", federation="metrics-mixed") == 4
        assert values(samples, "lepton_round_refusals_total") == {}  # both were B's
        assert not [s for s in samples if s.name.startswith(("lepton_api_", "process_"))]


def test_the_platform_auditor_sees_every_tenant(world: World) -> None:
    samples = scrape(world.api.client, world.platform_auditor)

    tenants = {s.labels["tenant"] for s in samples if s.name == "lepton_ledger_epsilon_spent"}
    assert tenants == {"clinic-a", "clinic-b"}
    assert any(s.name == "lepton_api_request_duration_seconds_count" for s in samples)


# -- request latency ------------------------------------------------------------------------


def test_request_latency_is_labelled_by_route_template(world: World) -> None:
    api = world.api
    node_id = world.a_nodes[0]["id"]
    missing = str(uuid.uuid4())
    for path in (f"/nodes/{node_id}", f"/nodes/{missing}"):
        api.call("GET", path, api.admin)
    api.client.get(f"/made-up/{missing}", headers=api.admin)
    api.client.request("BREW", "/metrics", headers=api.admin)

    text = client_text(api.app, api.admin)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    assert missing not in text
    assert node_id not in text
    requests = values(samples, "lepton_api_requests_total")
    node_route = {"method": "GET", "route": "/api/v1/nodes/{node_id}"}
    assert requests[tuple(sorted({**node_route, "status": "200"}.items()))] >= 1
    assert requests[tuple(sorted({**node_route, "status": "404"}.items()))] >= 1
    assert one(samples, "lepton_api_request_duration_seconds_count", **node_route) >= 2
    routes = {s.labels["route"] for s in samples if "route" in s.labels}
    assert "<unmatched>" in routes
    assert all(r == "<unmatched>" or r.startswith(("/api/v1/", "/metrics")) for r in routes)
    methods = {s.labels["method"] for s in samples if "method" in s.labels}
    assert "BREW" not in methods
    assert "other" in methods


def test_metrics_is_documented_in_the_openapi_schema(world: World) -> None:
    operation = world.api.app.openapi()["paths"]["/metrics"]["get"]

    assert operation["security"] == [{"apiKey": []}]
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert re.search(r"credentials_file", operation["description"])


def test_rounds_recorded_before_codes_count_their_members_as_unrecorded() -> None:
    """A round recorded before schema 0005 has reasons but no codes: its left-out members
    are counted, under status and code `unrecorded`, not guessed from the free text."""
    old = RunRound(
        run_id="r",
        round=1,
        participants=json.dumps(["a", "b"]),
        refusals=json.dumps({"c": "The site's budget is spent.", "d": "No answer."}),
        outcomes=None,
        seconds=2.0,
        recorded_at="2026-11-30T00:00:00.000000Z",
    )

    facts = round_facts(old, "fed")

    assert (facts.participants, facts.dropouts, facts.seconds) == (2, 0, 2.0)
    assert facts.outcomes == {"c": ("unrecorded", "unrecorded"), "d": ("unrecorded", "unrecorded")}
