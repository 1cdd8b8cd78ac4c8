"""deploy/grafana/lepton.json: a well-formed Grafana dashboard whose every query names only
series that the admin service or a node exports, and parses as PromQL (Prometheus's own
`promtool`, when Debian's prometheus package is installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_server import INSTALL_HINT

from client_node.ledger import Ledger
from client_node.metrics import NodeCollector, ReplyCounter
from client_node.settings import NodeSettings
from coordinator.api.request_metrics import RequestMetrics
from coordinator.db import Database
from coordinator.services.common import SYSTEM
from coordinator.services.metrics import AdminCollector

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "lepton.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
METRIC_NAME = re.compile(r"\blepton_[a-z0-9_]+")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def _exported(tmp_path: Path) -> set[str]:
    """Every series name the admin service and a node export (from the collectors' families,
    which they yield even when they hold no sample yet)."""
    db = Database(f"sqlite:///{tmp_path / 'admin.db'}")
    db.upgrade()
    settings = NodeSettings.model_validate(
        {
            "node": {"name": "n", "state_dir": str(tmp_path / "state")},
            "data": {"task": "breast_cancer", "partition": "site-0-of-3"},
            "privacy": {"epsilon_budget": 1.0},
            "superlink": {"address": "127.0.0.1:1", "root_certificates": "ca.pem"},
            "auth": {"private_key": "key"},
        }
    )
    families = []
    try:
        families += list(AdminCollector(db, SYSTEM).collect())
        families += list(RequestMetrics().collect())
        with Ledger(settings.ledger_path) as ledger:
            families += list(NodeCollector(settings, ledger, ReplyCounter()).collect())
    finally:
        db.dispose()
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = _dashboard()

    assert dashboard["uid"] == "lepton-fl"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel), panel
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "tenant"}


def test_every_query_names_series_we_export(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    dashboard = _dashboard()

    used = {m for e in _exprs(dashboard) for m in METRIC_NAME.findall(e)}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]

    assert used, "the check can fail"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert all(any(METRIC_NAME.search(t["expr"]) for t in p["targets"]) for p in panels)
    ledger_gauges = {"lepton_ledger_epsilon_spent", "lepton_ledger_epsilon_remaining"}
    assert ledger_gauges <= used
    assert {"lepton_node_epsilon_spent", "lepton_node_refusals_total"} <= used


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = f"promtool is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this check. {message}", pytrace=False)
        pytest.skip(message)
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$tenant", ".*")
        for e in _exprs(_dashboard())
        if not e.startswith("label_values(")  # Grafana's, not PromQL
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML

    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
