"""`lepton demo` end to end through the admin API, on the real processes, 2 rounds.

The demo bootstraps a platform-admin key, creates a tenant and a node per hospital, the
nodes enroll (the coordinator registers their keys), the federation's run is started and
followed through the API, then the ledger is reconciled with every node's own, a release is
verified offline and the audit chain is verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lepton.demo import DemoOptions, run_demo
from lepton_demo.heart_disease import HEART_DISEASE_SITES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("demo-api")
    summary_path = root / "summary.json"
    returned = run_demo(
        DemoOptions(rounds=2, summary_path=summary_path, workdir=root / "workspace")
    )
    written = json.loads(summary_path.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(returned))
    return written


def test_demo_api_run_completes_with_secure_aggregation(demo: dict[str, Any]) -> None:
    assert demo["failure"] is None
    assert demo["run"]["state"] == "finished"
    assert demo["rounds_completed"] == 2
    assert [r["round"] for r in demo["rounds"]] == [1, 2]
    assert all(sorted(r["participants"]) == sorted(HEART_DISEASE_SITES) for r in demo["rounds"])
    assert demo["secure_aggregation"] is True
    assert demo["secagg"] is not None
    assert demo["admin_api"].startswith("http://127.0.0.1:")


def test_demo_api_ledger_reconciles_with_every_node(demo: dict[str, Any]) -> None:
    reconciliation = demo["ledger_reconciliation"]

    assert reconciliation["ok"] is True
    assert set(reconciliation["nodes"]) == set(HEART_DISEASE_SITES)
    assert all(r == {"ok": True, "mismatches": []} for r in reconciliation["nodes"].values())
    for node in demo["nodes"]:
        assert node["epsilon_coordinator_ledger"] == pytest.approx(node["epsilon"], rel=1e-6)
        assert 0 < node["epsilon"] <= demo["target_epsilon"] + 1e-9
        assert len(node["history"]) == 3  # two training rounds and the evaluation release


def test_demo_api_release_and_audit_verify(demo: dict[str, Any]) -> None:
    release = demo["release"]

    assert release["verified"] is True, release
    assert release["version"] == 1
    assert release["model_digest"].startswith("sha256:")
    assert demo["audit"]["ok"] is True
    assert demo["audit"]["events"] > 0


def test_demo_api_summary_keeps_its_fields(demo: dict[str, Any]) -> None:
    expected = {
        "federation",
        "federation_digest",
        "rounds_completed",
        "tls",
        "node_auth",
        "secure_aggregation",
        "secagg",
        "delta",
        "accountant",
        "target_epsilon",
        "nodes",
        "rounds",
        "failure",
        "wall_seconds",
    }
    node_fields = {
        "name",
        "node_id",
        "num_examples",
        "epsilon",
        "epsilon_budget",
        "epsilon_reported_to_coordinator",
        "history",
        "local_only",
        "federated",
    }

    assert expected <= set(demo)
    assert all(node_fields <= set(node) for node in demo["nodes"])


def test_demo_api_ends_with_the_auditors_report_and_its_membership_audit(
    demo: dict[str, Any],
) -> None:
    """The demo's signed report verifies offline and carries the run's membership audit:
    every hospital's loss histograms, released with its evaluation, pooled into one AUC."""
    report = demo["audit_report"]
    assert report["verified"] is True, report["failures"]
    pooled = report["membership_audit"]
    assert pooled is not None
    assert pooled["nodes"] == len(HEART_DISEASE_SITES)
    assert pooled["ci_low"] <= pooled["auc"] <= pooled["ci_high"]
    signed = json.loads(Path(report["json"]).read_text(encoding="utf-8"))
    (federation,) = signed["federations"]
    audit = federation["runs"][-1]["membership_audit"]
    assert sorted(n["name"] for n in audit["nodes"]) == sorted(HEART_DISEASE_SITES)
