"""A real Prometheus (Debian's package) scrapes a real coordinator and two real nodes during
a short run, and its HTTP API gives the ledgers' epsilon exactly.

`lepton coordinator start` (TLS SuperLink, admin API on a real SQLite file) and two
`lepton node start` processes on 127.0.0.1; the admin API enrolls the nodes (two tenants),
Prometheus scrapes the admin service's /metrics with a platform-auditor key as its bearer
credentials file and each node's own loopback /metrics, every second, while a 2-round run
goes through. Then, through Prometheus's query API: every node's ε gauge at the coordinator
equals the coordinator's ledger (`GET /ledger/nodes/{id}`), and each node's own ε gauge
equals its own ledger (`lepton node ledger --json`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_server import INSTALL_HINT, PrometheusServer, find_prometheus

from client_node.settings import load_node_settings
from lepton.cluster import LocalCluster, NodePlan, lepton_command
from lepton_fl.config import Member

pytestmark = pytest.mark.slow

FED = "prom-fed"
SITES = {"prom-a": ("prom-tenant-a", 0), "prom-b": ("prom-tenant-b", 1)}


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    binary = find_prometheus()
    if binary is None:
        message = f"Prometheus is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Prometheus test. {message}", pytrace=False)
        pytest.skip(message)
    return binary


@dataclass
class Scraped:
    cluster: LocalCluster
    prometheus: PrometheusServer
    client: httpx.Client
    admin: dict[str, str]
    nodes: dict[str, dict[str, Any]]  # name -> the enrollment answer
    run: dict[str, Any]


def _ok(client: httpx.Client, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
    response = client.request(method, path, headers=headers, **kw)
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: Path) -> Iterator[Scraped]:
    root = tmp_path_factory.mktemp("prometheus-e2e")
    plans = [
        NodePlan(
            name, "breast_cancer", f"site-{p}-of-3", 10.0, (FED,), require_secure_aggregation=False
        )
        for name, (_, p) in SITES.items()
    ]
    with LocalCluster(root / "cluster", plans) as cluster:
        cluster.start_coordinator()
        cluster.wait_for_api()
        admin = {"Authorization": f"Bearer {cluster.create_admin_key()}"}
        with httpx.Client(base_url=cluster.api_url, timeout=60) as client:
            nodes = _enroll_and_start(cluster, client, admin)
            auditor = _ok(client, "POST", "/api-keys", admin, json={"role": "auditor"})
            credentials = root / "scrape-key"
            credentials.write_text(auditor["key"])
            credentials.chmod(0o600)
            node_targets = [
                f"127.0.0.1:{load_node_settings(n.config_path).metrics.port}"
                for n in cluster.nodes.values()
            ]
            scrape_configs = [
                {
                    "job_name": "lepton-coordinator",
                    "authorization": {"type": "Bearer", "credentials_file": str(credentials)},
                    "static_configs": [{"targets": [f"127.0.0.1:{cluster.api_port}"]}],
                },
                {"job_name": "lepton-node", "static_configs": [{"targets": node_targets}]},
            ]
            with PrometheusServer(prometheus_binary, root / "prometheus", scrape_configs) as prom:
                _wait(lambda: _all_up(prom), what="every target to be scraped", prom=prom)
                run = _run(cluster, client, admin, nodes)
                yield Scraped(cluster, prom, client, admin, nodes, run)


def _enroll_and_start(
    cluster: LocalCluster, client: httpx.Client, admin: dict[str, str]
) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {}
    for name, (tenant, _) in SITES.items():
        body = _ok(client, "POST", "/tenants", admin, json={"name": tenant})
        key = _ok(
            client,
            "POST",
            "/api-keys",
            admin,
            json={"role": "tenant_admin", "tenant_id": body["id"]},
        )
        created = _ok(
            client,
            "POST",
            "/nodes",
            {"Authorization": f"Bearer {key['key']}"},
            json={"name": name, "epsilon_budget": 10.0},
        )
        public_key = (cluster.root / "pki" / "nodes" / f"{name}.pub").read_text()
        nodes[name] = _ok(
            client,
            "POST",
            "/nodes/enroll",
            {},
            json={"token": created["enrollment_token"], "public_key": public_key},
        )
    for name, node in nodes.items():
        cluster.start_node(name, Member(name=name, node_id=int(node["flower_node_id"])))
    cluster.wait_for_nodes(timeout=120)
    return nodes


def _run(
    cluster: LocalCluster,
    client: httpx.Client,
    admin: dict[str, str],
    nodes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    federation = _ok(
        client,
        "POST",
        "/federations",
        admin,
        json={
            "name": FED,
            "task": "breast_cancer",
            "rounds": 2,
            "min_participants": 2,
            "privacy": {"target_epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
            "training": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.3},
            "secure_aggregation": {"enabled": False},  # two nodes: a sum would reveal each
            "members": [n["id"] for n in nodes.values()],
        },
    )
    run: dict[str, Any] = _ok(client, "POST", f"/federations/{federation['id']}/runs", admin)
    deadline = time.monotonic() + 240
    while run["state"] in ("submitted", "running") and time.monotonic() < deadline:
        cluster.check_alive()
        time.sleep(0.5)
        run = _ok(client, "GET", f"/runs/{run['id']}", admin)
    assert run["state"] == "finished", run
    return run


def _all_up(prom: PrometheusServer) -> bool:
    targets = prom.targets()
    return len(targets) == 3 and all(t["health"] == "up" for t in targets)


def _wait(check: Callable[[], bool], *, what: str, prom: PrometheusServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"Timed out waiting for {what}: {prom.targets()}\n{prom.log_tail()}")


def _value(prom: PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_prometheus_gets_the_coordinators_epsilon_exactly(scraped: Scraped) -> None:
    s = scraped
    for name, node in s.nodes.items():
        ledger = _ok(s.client, "GET", f"/ledger/nodes/{node['id']}", s.admin)
        expr = f'lepton_ledger_epsilon_spent{{job="lepton-coordinator",node="{name}"}}'
        assert ledger["epsilon_spent"] > 0
        _wait(
            lambda e=expr, v=ledger["epsilon_spent"]: _value(s.prometheus, e) == v,  # type: ignore[misc]
            what=f"{expr} == {ledger['epsilon_spent']!r}",
            prom=s.prometheus,
        )
        remaining = f'lepton_ledger_epsilon_remaining{{node="{name}"}}'
        assert _value(s.prometheus, remaining) == ledger["epsilon_remaining"]
        tenant = _value(
            s.prometheus, f'count(lepton_ledger_epsilon_spent{{tenant="{SITES[name][0]}"}})'
        )
        assert tenant == 1


def test_prometheus_gets_each_nodes_own_epsilon_exactly(scraped: Scraped) -> None:
    s = scraped
    for name, node in s.cluster.nodes.items():
        report = json.loads(
            subprocess.run(
                lepton_command("node", "ledger", "--config", str(node.config_path), "--json"),
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
        )
        expr = f'lepton_node_epsilon_spent{{job="lepton-node",node="{name}"}}'
        assert report["epsilon"] > 0
        _wait(
            lambda e=expr, v=report["epsilon"]: _value(s.prometheus, e) == v,  # type: ignore[misc]
            what=f"{expr} == {report['epsilon']!r}",
            prom=s.prometheus,
        )
        trained = f'lepton_node_rounds_trained_total{{node="{name}"}}'
        assert _value(s.prometheus, trained) == 2


def test_prometheus_saw_the_rounds(scraped: Scraped) -> None:
    prom = scraped.prometheus
    fed = f'{{federation="{FED}"}}'
    _wait(
        lambda: _value(prom, f"lepton_round_duration_seconds_count{fed}") == 2,
        what="both rounds",
        prom=prom,
    )
    assert _value(prom, f"lepton_round_participants_sum{fed}") == 4
    assert _value(prom, f"lepton_round_last_participants{fed}") == 2
    assert _value(prom, f'lepton_runs{{federation="{FED}",state="finished"}}') == 1
    assert _value(prom, 'sum(lepton_api_requests_total{route="/api/v1/runs/{run_id}"})')
