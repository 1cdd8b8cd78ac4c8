"""Lint, render and schema-validate the Helm charts in deploy/helm/, without a helm binary.

helm-python-sdk (Helm 4's SDK as a library) lints each chart (strict) and renders it for a few
sets of values; kubernetes-validate checks every rendered manifest offline against the
Kubernetes API schema (strict: unknown fields are errors). For the node chart the rendered
node.toml must also load as the node's own settings (client_node.settings.NodeSettings).

    python deploy/ci/helm_check.py [--out DIR] [--kube-version 1.30.0]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "deploy" / "helm"
SIGNING_KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
    "-----END PUBLIC KEY-----\n"
)

# (chart, case, values): the defaults an operator must fill in, and the optional branches.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "lepton-node",
        "demo partition",
        {
            "node": {"name": "cleveland"},
            "data": {"partition": "cleveland"},
            "superlink": {"address": "fl.example.org:9093"},
            "auth": {"existingSecret": "lepton-node-cleveland"},
        },
    ),
    (
        "lepton-node",
        "own CSV, pinned key as a value, relaxed policy",
        {
            "node": {"name": "st-mary", "device": "cpu"},
            "data": {
                "partition": "st-mary",
                "datasetId": "heart_disease:st-mary-2026",
                "source": "csv",
                "path": "heart.csv",
                "target": "num",
                "columns": {"age": "float", "sex": "category", "chest_pain": "category"},
                "rename": {"chest_pain": "cp"},
                "labelValues": {"2": "1"},
            },
            "privacy": {
                "epsilonBudget": 5.0,
                "federations": ["heart-disease", "cardio-2"],
                "federationEpsilon": {"cardio-2": 1.5},
                "maxEpsilonPerFederation": 3.0,
                "minNoiseMultiplier": 0.8,
                "maxGradNorm": 1.0,
                "requireSecureAggregation": False,
            },
            "coordinator": {"publicKeyPem": SIGNING_KEY},
            "superlink": {"address": "fl.example.org:9093"},
            "auth": {"existingSecret": "lepton-node-st-mary"},
            "dataVolume": {"existingClaim": "st-mary-data"},
        },
    ),
    (
        "lepton-coordinator",
        "SQLite on the state volume",
        {"pki": {"existingSecret": "lepton-coordinator-pki"}},
    ),
    (
        "lepton-coordinator",
        "PostgreSQL, load balancer, tenant-only metrics",
        {
            "pki": {"existingSecret": "lepton-coordinator-pki"},
            "database": {"existingSecret": "lepton-coordinator-db"},
            "metricsNodeLabels": False,
            "fleet": {
                "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["192.0.2.0/24"]}
            },
            "persistence": {"existingClaim": "coordinator-state"},
        },
    ),
]


def render(chart: str, values: dict[str, Any], kube_version: str) -> dict[str, str]:
    """Lint (strict) and render one chart; fail on any lint error."""
    path = CHARTS / chart
    report = helm.lint(str(path), values, strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) > 1]
    if report.get("errors") or problems:
        raise SystemExit(f"{chart}: helm lint failed: {report}")
    with helm.Chart.load(str(path)) as loaded:
        rendered: dict[str, str] = loaded.render(
            values, name="site", namespace="lepton", is_install=True
        )
    return rendered


def validate(chart: str, rendered: dict[str, str], kube_version: str) -> list[dict[str, Any]]:
    """Every rendered manifest, schema-validated (strict); returns the objects."""
    objects: list[dict[str, Any]] = []
    for name, text in sorted(rendered.items()):
        if not name.endswith(".yaml"):
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise SystemExit(f"{chart} {name}: {obj.get('kind')}: {err}") from err
            objects.append(obj)
    return objects


def check_node_toml(objects: list[dict[str, Any]]) -> str:
    sys.path.insert(0, str(ROOT))
    from client_node.settings import NodeSettings

    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    text: str = config["data"]["node.toml"]
    NodeSettings.model_validate(tomllib.loads(text))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="write the rendered manifests here")
    parser.add_argument("--kube-version", default="1.30.0")
    args = parser.parse_args()
    for chart, case, values in CASES:
        started = time.monotonic()
        rendered = render(chart, values, args.kube_version)
        objects = validate(chart, rendered, args.kube_version)
        if chart == "lepton-node":
            check_node_toml(objects)
        kinds = ", ".join(sorted(o["kind"] for o in objects))
        print(f"{chart} ({case}): lint ok, {len(objects)} objects valid for Kubernetes "
              f"{args.kube_version} ({kinds}) in {time.monotonic() - started:.2f} s")  # fmt: skip
        if args.out:
            out = args.out / chart / case.split(",")[0].replace(" ", "-")
            out.mkdir(parents=True, exist_ok=True)
            for name, text in rendered.items():
                (out / Path(name).name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
