"""The auditor's privacy report: signed, complete, scoped, and verifiable offline.

A real admin app on a real SQLite file and SuperLink; the ServerApp's part is played through
its real journal and ledger sink (`play_serverapp`), so the ledger holds real DP-SGD charges
whose epsilons Opacus computed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from admin_support import AdminApi, Tenant, bearer, play_serverapp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import sync_playwright

from coordinator.superlink import SuperLink
from lepton.audit_html import embedded_report
from lepton.audit_report import write_report_files
from lepton.audit_verify import verify_report
from lepton.cluster import lepton_command
from lepton_fl.crypto.detached import sign_detached
from lepton_fl.crypto.release import public_key_pem
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.privacy.membership import NUM_BINS
from lepton_fl.report_schema import json_schema

REPORT = "lepton-privacy-report/1"


@dataclass
class World:
    api: AdminApi
    a: Tenant
    b: Tenant
    federation: dict[str, Any]
    run: dict[str, Any]
    release: dict[str, Any]
    public_key: str
    key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("report")
    with AdminApi.start(root / "coordinator", superlink) as api:
        a, b = api.tenant("tenant-a"), api.tenant("tenant-b")
        nodes = [api.enrolled_node(a, f"a-{i}") for i in range(2)] + [api.enrolled_node(b, "b-0")]
        federation = api.federation("reported", [n["id"] for n in nodes])
        run = api.ok("POST", f"/federations/{federation['id']}/runs", api.admin)
        play_serverapp(api, run["id"], rounds=3, membership_audit=True)
        release = api.ok("POST", f"/runs/{run['id']}/releases", api.admin, json={})
        key = api.app.state.context.signing_key
        yield World(api, a, b, federation, run, release, public_key_pem(key), key)


def _report(world: World, headers: dict[str, str], **params: str) -> dict[str, Any]:
    body: dict[str, Any] = world.api.ok("GET", "/reports/privacy", headers, params=params)
    return body


def test_release_report_holds_every_charge_and_verifies_offline(
    world: World, tmp_path: Path
) -> None:
    signed = _report(world, world.api.auditor(), release_id=world.release["id"])
    report = signed["report"]

    assert report["format"] == REPORT
    assert report["scope"]["kind"] == "release"
    assert {n["name"] for n in report["nodes"]} == {"a-0", "a-1", "b-0"}
    for node in report["nodes"]:
        assert [(e["round"], e["kind"]) for e in node["entries"]] == [
            (1, "train"),
            (2, "train"),
            (3, "train"),
            (3, "evaluate"),  # the final evaluation, which carried the membership audit
        ]
        assert all(e["accountant"] == "rdp" for e in node["entries"])
        cumulative = [e["epsilon_cumulative"] for e in node["entries"]]
        assert cumulative == sorted(cumulative)
        assert node["epsilon_spent"] >= cumulative[-1]
    (federation,) = report["federations"]
    assert federation["privacy"]["target_epsilon"] == 2.0
    assert [len(r["participants"]) for r in federation["runs"][0]["rounds"]] == [3, 3, 3]
    assert federation["releases"][0]["model_digest"] == world.release["model_digest"]
    assert report["audit_checkpoint"]["checkpoint"]["seq"] >= 1

    audit = federation["runs"][0]["membership_audit"]
    assert [n["name"] for n in audit["nodes"]] == ["a-0", "a-1", "b-0"]
    assert audit["nodes_other"] == 0
    assert audit["pooled"]["release"]["members"] == [
        sum(n["release"]["members"][i] for n in audit["nodes"]) for i in range(NUM_BINS)
    ]
    for item in [*audit["nodes"], audit["pooled"]]:
        result = item["result"]
        assert result["ci_low"] <= result["auc"] <= result["ci_high"]

    result = verify_report(report, signed["signature"], world.public_key)
    assert result.ok, result.failures
    assert result.checks >= 2 + 3 * 4
    assert any("membership audit: pooled AUC" in note for note in result.notes)

    files = write_report_files(signed, tmp_path / "out")
    page = files.html.read_text(encoding="utf-8")
    assert page.count("<svg") >= 2 * 3 + 1  # ε and parameters per node, rounds per run
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "Membership-inference audit of the final model" in page
    assert embedded_report(page) == signed
    for target in (files.json, files.html):
        done = subprocess.run(
            lepton_command("audit", "verify", str(target),
                           "--public-key", str(_pem_file(world, tmp_path))),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Privacy report verified" in done.stdout


def _pem_file(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.pem"
    path.write_text(world.public_key, encoding="utf-8")
    return path


def test_an_understated_epsilon_fails_even_when_signed(world: World, tmp_path: Path) -> None:
    """An operator with the signing key who understates ε is caught by the recomputation."""
    signed = _report(world, world.api.admin, federation_id=world.federation["id"])
    report = json.loads(json.dumps(signed["report"]))
    entry = report["nodes"][1]["entries"][2]
    entry["epsilon_cumulative"] *= 0.9
    forged = {"report": report, "signature": sign_detached(REPORT, report, world.key)}

    result = verify_report(forged["report"], forged["signature"], world.public_key)

    assert not result.ok
    assert len(result.failures) == 1
    assert "entry 3" in result.failures[0]
    assert "round 3" in result.failures[0]

    files = write_report_files(forged, tmp_path / "forged")
    done = subprocess.run(
        lepton_command("audit", "verify", str(files.json),
                       "--public-key", str(_pem_file(world, tmp_path))),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "FAILED" in done.stdout
    assert "entry 3" in done.stdout


def test_a_flattered_membership_audit_fails_even_when_signed(world: World) -> None:
    """An operator who re-signs a report with a lower attack AUC than the released histograms
    give, or keeps a node's audit release after dropping the evaluation charge that paid
    for it, is caught: the AUC is recomputed and every release needs its charge."""
    signed = _report(world, world.api.admin, federation_id=world.federation["id"])
    flattered = json.loads(json.dumps(signed["report"]))
    audit = flattered["federations"][0]["runs"][0]["membership_audit"]
    audit["nodes"][1]["result"]["auc"] = 0.5
    unpaid = json.loads(json.dumps(signed["report"]))
    node = unpaid["nodes"][0]
    node["entries"] = [e for e in node["entries"] if e["kind"] != "evaluate"]

    flattered_result = verify_report(
        flattered, sign_detached(REPORT, flattered, world.key), world.public_key
    )
    unpaid_result = verify_report(
        unpaid, sign_detached(REPORT, unpaid, world.key), world.public_key
    )

    assert len(flattered_result.failures) == 1
    assert "a-1: stated AUC" in flattered_result.failures[0]
    assert any(
        f"node {node['name']} released loss histograms" in f and "not paid for" in f
        for f in unpaid_result.failures
    ), unpaid_result.failures


def test_an_altered_report_fails_its_signature(world: World) -> None:
    signed = _report(world, world.api.admin, release_id=world.release["id"])
    report = json.loads(json.dumps(signed["report"]))
    report["nodes"][0]["epsilon_budget"] = 100.0
    report["nodes"][0]["epsilon_remaining"] = 100.0 - report["nodes"][0]["epsilon_spent"]

    result = verify_report(report, signed["signature"], world.public_key)

    assert not result.ok
    assert any("altered after it was signed" in f for f in result.failures)
    impostor = public_key_pem(Ed25519PrivateKey.generate())
    assert any(
        "trusted coordinator key" in f
        for f in verify_report(signed["report"], signed["signature"], impostor).failures
    )


def test_a_tenant_auditor_sees_its_nodes_and_only_counts_of_others(world: World) -> None:
    api = world.api
    key = api.ok("POST", "/api-keys", api.admin, json={"role": "auditor", "tenant_id": world.b.id})
    auditor_b = bearer(key["key"])

    report = _report(world, auditor_b, federation_id=world.federation["id"])["report"]

    assert [n["name"] for n in report["nodes"]] == ["b-0"]
    (federation,) = report["federations"]
    assert federation["members_other"] == 2
    for rnd in federation["runs"][0]["rounds"]:
        assert len(rnd["participants"]) == 1
        assert rnd["participants_other"] == 2
    audit = federation["runs"][0]["membership_audit"]
    assert [n["name"] for n in audit["nodes"]] == ["b-0"]  # others' releases only counted
    assert audit["nodes_other"] == 2
    assert "a-0" not in json.dumps(audit)
    own = _report(world, auditor_b)["report"]
    assert own["scope"] == {"kind": "tenant", "id": world.b.id, "name": "tenant-b"}
    assert [n["name"] for n in own["nodes"]] == ["b-0"]

    other = api.call("GET", "/reports/privacy", auditor_b, params={"tenant_id": world.a.id})
    assert other.status_code == 404
    foreign = api.ok("POST", "/federations", api.admin, json={
        "name": "a-only", "task": "breast_cancer", "min_participants": 2,
        "secure_aggregation": {"enabled": False},
        "privacy": {"target_epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
        "members": [n["id"] for n in api.ok("GET", "/nodes", world.a.headers)[:2]],
    })  # fmt: skip
    hidden = api.call("GET", "/reports/privacy", auditor_b, params={"federation_id": foreign["id"]})
    assert hidden.status_code == 404
    platform = api.call("GET", "/reports/privacy", auditor_b, params={})
    assert platform.status_code == 200  # its own tenant's view, never the platform's


def test_a_report_covers_one_scope(world: World) -> None:
    response = world.api.call(
        "GET",
        "/reports/privacy",
        world.api.admin,
        params={"tenant_id": world.a.id, "federation_id": world.federation["id"]},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_report_scope"
    unknown = world.api.call(
        "GET", "/reports/privacy", world.api.admin, params={"release_id": "not-an-id"}
    )
    assert unknown.status_code == 404


SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "privacy-report.schema.json"


def test_the_report_validates_against_its_published_schema(world: World) -> None:
    """The committed JSON Schema is the verifier's model, and a real report validates
    against it with an independent validator."""
    assert json.loads(SCHEMA.read_text()) == json_schema(), (
        "docs/privacy-report.schema.json is stale: python -m lepton_fl.report_schema > "
        "docs/privacy-report.schema.json"
    )
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    for params in ({}, {"release_id": world.release["id"]}, {"tenant_id": world.b.id}):
        report = _report(world, world.api.admin, **params)["report"]
        errors = [e.message for e in validator.iter_errors(report)]
        assert errors == [], errors
    broken = json.loads(json.dumps(report))
    broken["nodes"][0]["entries"][0]["accountant"] = "guess"
    assert not validator.is_valid(broken)


def test_a_dropped_charge_fails_even_when_signed(world: World) -> None:
    """An operator drops one round's charge from a node's history (its ε then looks lower
    and every later cumulative ε recomputes consistently) and signs the result: the rounds
    the node took part in still name it."""
    signed = _report(world, world.api.admin, federation_id=world.federation["id"])
    report = json.loads(json.dumps(signed["report"]))
    node = report["nodes"][0]
    del node["entries"][1]
    steps = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in node["entries"]]
    for i, entry in enumerate(node["entries"]):
        entry["epsilon_cumulative"] = epsilon_spent(
            [AccountantStep(*s) for s in steps[: i + 1]], delta=entry["delta"], accountant="rdp"
        )
    node["epsilon_spent"] = node["entries"][-1]["epsilon_cumulative"]
    node["epsilon_remaining"] = node["epsilon_budget"] - node["epsilon_spent"]
    forged_signature = sign_detached(REPORT, report, world.key)

    result = verify_report(report, forged_signature, world.public_key)

    assert not result.ok
    assert result.failures == [
        f"node {node['name']} took part in run {world.run['id'][:8]} round 2, but its history "
        "has no charge for that round: an entry was dropped"
    ]


def test_a_stripped_signature_fails(world: World, tmp_path: Path) -> None:
    signed = _report(world, world.api.admin, release_id=world.release["id"])
    assert any(
        "carries none" in f
        for f in verify_report(signed["report"], None, world.public_key).failures
    )
    files = write_report_files(signed, tmp_path / "r")
    files.signature.unlink()
    done = subprocess.run(
        lepton_command("audit", "verify", str(files.json),
                       "--public-key", str(_pem_file(world, tmp_path))),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "privacy-report.json.sig does not exist" in done.stderr


def test_the_page_renders_offline_in_a_real_browser(world: World, tmp_path: Path) -> None:
    """Debian's chromium, driven by Playwright, with the network off: the page loads, every
    plot draws, nothing is fetched, and the console stays clean."""
    browser_path = shutil.which("chromium")
    if browser_path is None:
        message = "chromium is not installed (make test installs Debian's package as root)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    signed = _report(world, world.api.auditor(), release_id=world.release["id"])
    page_file = write_report_files(signed, tmp_path / "page").html
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True).new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            plots = page.locator("svg")
            boxes = [plots.nth(i).bounding_box() for i in range(plots.count())]
            drawn = [plots.nth(i).locator("polyline, rect").count() for i in range(plots.count())]
            title = page.title()
            embedded = page.locator("#privacy-report").text_content() or ""
        finally:
            browser.close()

    assert errors == []
    assert requests == [page_file.as_uri()]
    assert len(boxes) >= 2 * 3 + 2
    assert all(b is not None and b["width"] > 100 and b["height"] > 100 for b in boxes)
    assert all(n > 0 for n in drawn)
    assert title.startswith("Privacy report: release")
    assert json.loads(embedded.replace("<\\/", "</")) == signed
