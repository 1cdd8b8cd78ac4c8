"""Two sector federations at once on one coordinator, end to end on the real processes.

`lepton demo --sector bank,factory` for 2 rounds: three banks (credit scoring, a tabular MLP)
and four solar-cell plants (ELPV images, a GroupNorm CNN), each institution its own tenant and
node, both runs in flight on the same SuperLink and admin API at the same time. Each run must
finish with only its own federation's nodes, every ledger must reconcile, and each release
must verify."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lepton.demo import DemoOptions, run_demo
from lepton.sectors import SECTORS

pytestmark = pytest.mark.slow

ROUNDS = 2


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sectors")
    path = root / "summary.json"
    run_demo(
        DemoOptions(
            rounds=ROUNDS, sector="bank,factory", summary_path=path, workdir=root / "workspace"
        )
    )
    written: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return written


def test_both_federations_finish_with_only_their_own_nodes(summary: dict[str, Any]) -> None:
    assert summary["failure"] is None
    assert set(summary["sectors"]) == {"bank", "factory"}
    for key, one in summary["sectors"].items():
        sites = set(SECTORS[key].sites)
        assert one["run"]["state"] == "finished", one["run"]
        assert one["rounds_completed"] == ROUNDS
        assert all(set(r["participants"]) == sites for r in one["rounds"]), one["rounds"]
        assert {n["name"] for n in one["nodes"]} == sites
        assert one["secure_aggregation"] is True


def test_each_institution_is_its_own_tenant(summary: dict[str, Any]) -> None:
    nodes = [n for one in summary["sectors"].values() for n in one["nodes"]]

    assert len(nodes) == 7
    assert len({n["tenant_id"] for n in nodes}) == len(nodes)
    assert len({n["admin_node_id"] for n in nodes}) == len(nodes)


def test_each_federation_trains_its_own_model_and_reports_its_metrics(
    summary: dict[str, Any],
) -> None:
    bank, factory = summary["sectors"]["bank"], summary["sectors"]["factory"]

    assert (bank["model"], bank["task"]) == ("tabular_mlp", "credit_scoring")
    assert (factory["model"], factory["task"]) == ("mobilenet_features", "solar_defects")
    assert bank["federation_digest"] != factory["federation_digest"]
    for one in (bank, factory):
        metrics = one["federation_metrics"]
        assert metrics["num_examples"] > 0
        assert len(metrics["confusion"]) == 2
        assert sum(map(sum, metrics["confusion"])) == metrics["num_examples"]
        for node in one["nodes"]:
            assert 0 <= node["federated"]["accuracy"] <= 1
            assert node["federated"]["confusion"] is not None


def test_ledgers_reconcile_and_releases_verify_per_federation(summary: dict[str, Any]) -> None:
    for one in summary["sectors"].values():
        assert one["ledger_reconciliation"]["ok"] is True, one["ledger_reconciliation"]
        for node in one["nodes"]:
            assert node["epsilon_coordinator_ledger"] == pytest.approx(node["epsilon"], rel=1e-6)
            assert 0 < node["epsilon"] <= one["target_epsilon"] + 1e-9
        assert one["release"]["verified"] is True, one["release"]
    assert summary["audit"]["ok"] is True
