"""End to end through the admin API, as a real admin drives it.

`lepton coordinator start` (a real TLS SuperLink with node authentication, and the admin
API on a real SQLite file), three real nodes: the API enrolls them (their keys are
registered with the SuperLink), starts a run, which the ServerApp drives to the end while
recording the ledger; then a signed release is published, downloaded and verified offline,
the audit chain verifies, and a row altered directly in the database is named."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_node.ledger import GENESIS_HASH, Ledger, entry_hash
from coordinator.superlink import SuperLink
from lepton.cluster import LocalCluster, NodePlan, lepton_command
from lepton.ledger_report import ledger_rows
from lepton_fl.config import Member
from lepton_fl.crypto.release import verify_release

pytestmark = pytest.mark.slow

FED = "e2e-admin"
CRASH_FED = "e2e-crash"  # 4 rounds: long enough to be killed mid-run
SITES = {"site-a": ("hospitals", 0), "site-b": ("hospitals", 1), "site-c": ("clinic", 2)}


@dataclass
class Deployment:
    cluster: LocalCluster
    client: httpx.Client
    admin: dict[str, str]

    @property
    def root(self) -> Path:
        return self.cluster.root

    @property
    def superlink(self) -> SuperLink:
        assert self.cluster.superlink is not None
        return self.cluster.superlink

    def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        response = self.client.request(method, path, headers=headers, **kw)
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if "json" in response.headers.get("content-type", "") else response


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """`lepton coordinator start` (SuperLink + admin API) with nothing registered: the API
    enrolls the nodes."""
    plans = [
        NodePlan(name, "breast_cancer", f"site-{partition}-of-3", 10.0, (FED, CRASH_FED))
        for name, (_, partition) in SITES.items()
    ]
    with LocalCluster(tmp_path_factory.mktemp("admin-e2e"), plans) as cluster:
        cluster.start_coordinator()
        cluster.wait_for_api()
        admin = {"Authorization": f"Bearer {cluster.create_admin_key()}"}
        with httpx.Client(base_url=cluster.api_url, timeout=60) as client:
            yield Deployment(cluster, client, admin)


@pytest.fixture(scope="module")
def finished(deployment: Deployment) -> dict[str, Any]:
    d = deployment
    tenant_keys: dict[str, dict[str, str]] = {}
    for tenant in sorted({t for t, _ in SITES.values()}):
        body = d.call("POST", "/tenants", d.admin, json={"name": tenant})
        key = d.call(
            "POST", "/api-keys", d.admin, json={"role": "tenant_admin", "tenant_id": body["id"]}
        )
        tenant_keys[tenant] = {"Authorization": f"Bearer {key['key']}"}
    nodes: dict[str, dict[str, Any]] = {}
    for name, (tenant, _) in SITES.items():
        created = d.call(
            "POST", "/nodes", tenant_keys[tenant], json={"name": name, "epsilon_budget": 10.0}
        )
        public_key = (d.root / "pki" / "nodes" / f"{name}.pub").read_text()
        nodes[name] = d.call(
            "POST",
            "/nodes/enroll",
            {},
            json={"token": created["enrollment_token"], "public_key": public_key},
        )
    for name, node in nodes.items():
        d.cluster.start_node(name, Member(name=name, node_id=int(node["flower_node_id"])))
    d.cluster.wait_for_nodes(timeout=120)
    federation = d.call(
        "POST",
        "/federations",
        d.admin,
        json={
            "name": FED,
            "task": "breast_cancer",
            "rounds": 2,
            "min_participants": 3,
            "privacy": {"target_epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
            "training": {"local_epochs": 2, "batch_size": 32, "learning_rate": 0.3},
            "secure_aggregation": {"enabled": True},
            "members": [n["id"] for n in nodes.values()],
        },
    )
    run = d.call("POST", f"/federations/{federation['id']}/runs", d.admin)
    deadline = time.monotonic() + 240
    while run["state"] in ("submitted", "running") and time.monotonic() < deadline:
        d.cluster.check_alive()
        time.sleep(1.0)
        run = d.call("GET", f"/runs/{run['id']}", d.admin)
    return {"run": run, "nodes": nodes, "tenant_keys": tenant_keys}


def test_run_started_through_the_api_finishes(
    deployment: Deployment, finished: dict[str, Any]
) -> None:
    run = finished["run"]
    rounds = deployment.call("GET", f"/runs/{run['id']}/rounds", deployment.admin)

    assert run["state"] == "finished", run
    assert [r["round"] for r in rounds] == [1, 2]
    node_ids = sorted(n["id"] for n in finished["nodes"].values())
    assert all(sorted(r["participants"]) == node_ids for r in rounds)


def test_ledger_matches_every_nodes_own_ledger(
    deployment: Deployment, finished: dict[str, Any]
) -> None:
    d = deployment
    for name, node in finished["nodes"].items():
        report = d.call("GET", f"/ledger/nodes/{node['id']}", d.admin)
        rows = ledger_rows(d.cluster.nodes[name].ledger_path)
        verdict = d.call(
            "POST", f"/ledger/nodes/{node['id']}/reconcile", d.admin, json={"entries": rows}
        )

        # two training rounds and the scheduled evaluation's DP release, as the node charged
        assert [(h["round"], h["kind"]) for h in report["history"]] == [
            (1, "train"),
            (2, "train"),
            (2, "evaluate"),
        ]
        assert report["epsilon_spent"] == pytest.approx(report["epsilon_reported"], rel=1e-6)
        assert 0 < report["epsilon_spent"] <= 2.0 + 1e-9
        assert verdict == {"ok": True, "mismatches": [], "repaired": []}


def test_a_node_ledger_rewritten_after_the_fact_disagrees_with_its_reports(
    deployment: Deployment, finished: dict[str, Any], tmp_path: Path
) -> None:
    """Every charge carried its row hash in the node's chained ledger. A copy of a node's
    ledger with one charge lowered and every later hash recomputed passes the local check,
    but not the coordinator's: reconcile names the rewritten rows."""
    d = deployment
    name, node = "site-a", finished["nodes"]["site-a"]
    copy = tmp_path / "ledger.db"
    original = d.cluster.nodes[name].ledger_path
    with sqlite3.connect(original) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    key = original.with_name(original.name + ".report-key")  # the node's, as its site has it
    copy.with_name(copy.name + ".report-key").write_bytes(key.read_bytes())
    with Ledger(copy, read_only=True) as reader:
        entries = reader.entries()
    raw = sqlite3.connect(copy)
    seqs = [row[0] for row in raw.execute("SELECT seq FROM ledger_entries ORDER BY seq")]
    raw.execute("DROP TRIGGER ledger_entries_no_update")
    previous = GENESIS_HASH
    for index, (seq, entry) in enumerate(zip(seqs, entries, strict=True)):
        if index == 0:  # the first charge, made to look cheaper
            entry = dataclasses.replace(entry, noise_multiplier=entry.noise_multiplier * 2)
        previous = entry_hash(previous, seq, entry)
        raw.execute(
            "UPDATE ledger_entries SET noise_multiplier = ?, row_hash = ? WHERE seq = ?",
            (entry.noise_multiplier, previous, seq),
        )
    raw.commit()
    raw.close()
    with Ledger(copy, read_only=True) as reader:
        assert reader.verify().rows == len(entries)  # consistent: the node alone cannot tell

    verdict = d.call(
        "POST",
        f"/ledger/nodes/{node['id']}/reconcile",
        d.admin,
        json={"entries": ledger_rows(copy)},
    )

    assert verdict["ok"] is False
    rewritten = [m for m in verdict["mismatches"] if "rewritten after the charge" in m["problem"]]
    assert (rewritten[0]["round"], rewritten[0]["kind"]) == (entries[0].round, entries[0].kind)
    assert len(rewritten) == len(entries)  # every later hash changed with it


def test_signed_release_verifies_offline(
    deployment: Deployment, finished: dict[str, Any], tmp_path: Path
) -> None:
    d = deployment
    release = d.call("POST", f"/runs/{finished['run']['id']}/releases", d.admin, json={})
    tenant = finished["tenant_keys"]["clinic"]
    model = d.call("GET", f"/releases/{release['id']}/model", tenant)
    manifest = d.call("GET", f"/releases/{release['id']}/manifest", tenant)
    key = d.call("GET", "/signing-key", {})
    (tmp_path / "model.safetensors").write_bytes(model.content)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    verified, weights = verify_release(tmp_path, key["public_key_pem"])

    assert d.call("GET", f"/releases/{release['id']}/verification", d.admin)["ok"] is True
    assert verified["rounds"] == 2
    assert len(verified["participants"]) == 3
    assert weights


def test_nodes_keep_the_audit_checkpoints_their_runs_carried(
    deployment: Deployment, finished: dict[str, Any]
) -> None:
    """Each node verified and kept the signed audit checkpoint of the run it worked for;
    the coordinator's log holds to all of them (what a site sends an auditor)."""
    d = deployment
    kept = []
    for node in d.cluster.nodes.values():
        lines = (node.ledger_path.parent / "audit-checkpoints.jsonl").read_text().splitlines()
        assert lines, node.plan.name
        kept += [json.loads(line) for line in lines]
    verdict = d.call("POST", "/audit/verification", d.admin, json={"checkpoints": kept})
    assert verdict["ok"] is True, verdict["reason"]
    assert verdict["checkpoints_checked"] > len(kept)


def test_an_auditor_fetches_the_report_and_verifies_it_offline(
    deployment: Deployment, finished: dict[str, Any], tmp_path: Path
) -> None:
    """`lepton audit report` over HTTP with an auditor key, then `lepton audit verify` with
    nothing but the coordinator's public key."""
    d = deployment
    key = d.call("POST", "/api-keys", d.admin, json={"role": "auditor"})["key"]
    (tmp_path / "auditor.key").write_text(key)
    (tmp_path / "coordinator.pem").write_text(d.call("GET", "/signing-key", {})["public_key_pem"])
    base = d.cluster.api_url
    fetched = subprocess.run(
        lepton_command("audit", "report", "--api", base, "--out", str(tmp_path / "report"),
                       "--key-file", str(tmp_path / "auditor.key")),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    verified = subprocess.run(
        lepton_command("audit", "verify", str(tmp_path / "report" / "privacy-report.html"),
                       "--public-key", str(tmp_path / "coordinator.pem")),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Privacy report verified" in verified.stdout
    assert "3 node(s)" in verified.stdout

    wrong = subprocess.run(
        lepton_command("audit", "report", "--api", base, "--out", str(tmp_path / "x")),
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "LEPTON_API_KEY": "lfk_nope_nope"},
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "401" in wrong.stderr


def test_audit_chain_verifies_then_names_a_tampered_row(
    deployment: Deployment, finished: dict[str, Any]
) -> None:
    d = deployment
    assert d.call("GET", "/audit/verification", d.admin)["ok"] is True
    events = d.call("GET", "/audit/events", d.admin, params={"limit": 1000})
    target = next(e["seq"] for e in events if e["action"] == "run.round")

    with sqlite3.connect(d.root / "coordinator" / "admin.db") as db:
        db.execute("DROP TRIGGER audit_events_no_update")
        db.execute(
            "UPDATE audit_events SET details = replace(details, 'round', 'rouNd') WHERE seq = ?",
            (target,),
        )

    verdict = d.call("GET", "/audit/verification", d.admin)
    assert verdict["ok"] is False
    assert verdict["first_broken_seq"] == target
    assert f"Row {target}" in verdict["reason"]


def _wait_for_run(d: Deployment, run_id: str, *, until: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run = d.call("GET", f"/runs/{run_id}", d.admin)
    while not until(run) and time.monotonic() < deadline:
        time.sleep(0.5)
        run = d.call("GET", f"/runs/{run_id}", d.admin)
    return run  # type: ignore[no-any-return]


def _own_rows(d: Deployment, name: str, flower_run_id: str) -> list[tuple[int, str]]:
    with Ledger(d.cluster.nodes[name].ledger_path, read_only=True) as own:
        return [(e.round, e.kind) for e in own.entries() if e.run_id == flower_run_id]


def test_a_coordinator_killed_mid_run_restarts_and_the_run_ends(
    deployment: Deployment, finished: dict[str, Any]
) -> None:
    """SIGKILL `lepton coordinator start` alone mid-round (as the OOM killer would) and start
    it again at once on the same data dir: it starts on the first try, the interrupted run
    ends with the reason, the federation runs again, and the ledgers agree."""
    d = deployment
    federation = d.call(
        "POST",
        "/federations",
        d.admin,
        json={
            "name": CRASH_FED,
            "task": "breast_cancer",
            "rounds": 4,
            "min_participants": 3,
            "privacy": {"target_epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
            "training": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.3},
            "secure_aggregation": {"enabled": True},
            "members": [n["id"] for n in finished["nodes"].values()],
        },
    )["id"]
    run = d.call("POST", f"/federations/{federation}/runs", d.admin)
    run = _wait_for_run(d, run["id"], until=lambda r: r["rounds_completed"] >= 1, timeout=180)
    assert run["state"] == "running", run

    d.cluster.restart_coordinator(crash=True)
    d.cluster.wait_for_api(timeout=60)
    ended = _wait_for_run(d, run["id"], until=lambda r: r["state"] != "running", timeout=60)
    charged = {name: _own_rows(d, name, ended["flower_run_id"]) for name in finished["nodes"]}
    again = d.call("POST", f"/federations/{federation}/runs", d.admin)
    again = _wait_for_run(
        d, again["id"], until=lambda r: r["state"] not in ("submitted", "running"), timeout=240
    )

    assert ended["state"] == "failed", ended
    assert "Interrupted by a coordinator restart" in ended["failure"], ended
    assert again["state"] == "finished", again
    for name, node in finished["nodes"].items():
        # nothing of the interrupted run was charged again after the restart
        assert _own_rows(d, name, ended["flower_run_id"]) == charged[name]
        rows = ledger_rows(d.cluster.nodes[name].ledger_path)
        path = f"/ledger/nodes/{node['id']}/reconcile"
        # a round in flight at the kill may have charged a node whose reply never came:
        # repair records it (not aggregated); after that the ledgers agree exactly
        d.call("POST", path, d.admin, json={"entries": rows, "repair": True})
        assert d.call("POST", path, d.admin, json={"entries": rows}) == {
            "ok": True,
            "mismatches": [],
            "repaired": [],
        }


def test_revoked_node_is_unregistered(deployment: Deployment, finished: dict[str, Any]) -> None:
    d = deployment
    node = finished["nodes"]["site-c"]

    d.call("POST", f"/nodes/{node['id']}/revoke", finished["tenant_keys"]["clinic"])

    listed = d.superlink.flwr("supernode", "list", "lepton").get("nodes", [])
    live = {
        int(n["node-id"]) for n in listed if "unregistered" not in str(n.get("status", "")).lower()
    }
    assert int(node["flower_node_id"]) not in live
