"""Signed checkpoints anchor the audit chain: truncation and consistent rewrites are caught.

The attacks are an operator's with write access to the database: cut the log's last rows,
or remove events and recompute every later hash so that the chain is internally intact.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from admin_support import AdminApi
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.services.audit import GENESIS_HASH, event_hash
from lepton_fl.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    chain_problems,
    sign_checkpoint,
    verify_checkpoint,
)
from lepton_fl.crypto.detached import SignatureError, sign_detached, verify_detached
from lepton_fl.crypto.release import public_key_pem


def _signing_key(api: AdminApi) -> str:
    return str(api.ok("GET", "/signing-key", {})["public_key_pem"])


def _busy_log(api: AdminApi, tenants: int = 12) -> None:
    for i in range(tenants):
        tenant = api.tenant(f"t-{i}")
        node = api.node(tenant, f"n-{i}")
        if i % 3 == 0:
            api.ok("POST", f"/nodes/{node['id']}/revoke", tenant.headers)


def _sql(api: AdminApi, *statements: str) -> None:
    with sqlite3.connect(api.data_dir / "admin.db") as db:
        for statement in statements:
            db.execute(statement)


def _rewrite_without(api: AdminApi, action_prefix: str) -> int:
    """Remove every event whose action starts with `action_prefix` and recompute every
    seq, link and hash: the chain alone verifies as intact afterwards."""
    with sqlite3.connect(api.data_dir / "admin.db") as db:
        db.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        rows = db.execute(
            "SELECT seq, at, actor, action, target, details FROM audit_events ORDER BY seq"
        ).fetchall()
        kept = [r for r in rows if not str(r[3]).startswith(action_prefix)]
        db.execute("DELETE FROM audit_events")
        prev = GENESIS_HASH
        for seq, (_, at, actor, action, target, details) in enumerate(kept, start=1):
            digest = event_hash(
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                target=target,
                details=details,
                prev_hash=prev,
            )
            db.execute(
                "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, at, actor, action, target, details, prev, digest),
            )
            prev = digest
    return len(rows) - len(kept)


def _forget_stored_checkpoints(api: AdminApi) -> None:
    _sql(
        api,
        "DROP TRIGGER IF EXISTS audit_checkpoints_no_delete",
        "DELETE FROM audit_checkpoints",
    )


def test_every_state_change_leaves_a_signed_checkpoint_of_the_head(api: AdminApi) -> None:
    _busy_log(api, tenants=2)
    events = api.ok("GET", "/audit/events", api.admin, params={"limit": 1000})
    auditor = api.auditor()

    latest = api.ok("GET", "/audit/checkpoints/latest", auditor)
    checkpoint = verify_checkpoint(latest, _signing_key(api))

    head = api.ok("GET", "/audit/events", api.admin, params={"limit": 1000})[-1]
    assert (checkpoint.seq, checkpoint.head_hash) == (head["seq"], head["hash"])
    assert checkpoint.seq == len(events) + 1  # the auditor key's creation came after
    listed = api.ok("GET", "/audit/checkpoints", auditor, params={"limit": 1000})
    assert [c["checkpoint"]["seq"] for c in listed] == sorted(
        c["checkpoint"]["seq"] for c in listed
    )
    assert listed[-1] == latest
    verdict = api.ok("POST", "/audit/verification", auditor, json={"checkpoints": listed})
    assert verdict["ok"] is True
    assert verdict["checkpoints_checked"] >= 2 * len(listed)
    assert verdict["latest_checkpoint"] == latest


@pytest.mark.parametrize("cut", [1, 10])
def test_cutting_the_last_rows_is_detected(api: AdminApi, cut: int) -> None:
    _busy_log(api)
    auditor = api.auditor()
    kept = api.ok("GET", "/audit/checkpoints/latest", auditor)
    last = kept["checkpoint"]["seq"]
    with sqlite3.connect(api.data_dir / "admin.db") as db:
        db.execute("DROP TRIGGER audit_events_no_delete")
        db.execute("DELETE FROM audit_events WHERE seq > ?", (last - cut,))

    verdict = api.ok("GET", "/audit/verification", auditor)
    assert verdict["ok"] is False
    assert f"log ends at row {last - cut}" in verdict["reason"]
    assert "removed from its end" in verdict["reason"]

    # the operator also deletes the coordinator's own checkpoints: the chain alone looks
    # whole, which is why checkpoints leave the coordinator; the one the auditor kept
    # still catches it
    _forget_stored_checkpoints(api)
    assert api.ok("GET", "/audit/verification", auditor)["ok"] is True
    verdict = api.ok("POST", "/audit/verification", auditor, json={"checkpoints": [kept]})
    assert verdict["ok"] is False
    assert f"names row {last}" in verdict["reason"]


def test_a_consistent_rewrite_is_detected(api: AdminApi) -> None:
    _busy_log(api)
    auditor = api.auditor()
    kept = api.ok("GET", "/audit/checkpoints/latest", auditor)

    removed = _rewrite_without(api, "node.revoke")
    assert removed == 4
    verdict = api.ok("GET", "/audit/verification", auditor)
    assert verdict["ok"] is False
    assert "was rewritten" in verdict["reason"] or "removed from its end" in verdict["reason"]

    _forget_stored_checkpoints(api)
    assert api.ok("GET", "/audit/verification", auditor)["ok"] is True  # chain alone: intact
    verdict = api.ok("POST", "/audit/verification", auditor, json={"checkpoints": [kept]})
    assert verdict["ok"] is False
    assert f"names row {kept['checkpoint']['seq']}" in verdict["reason"]


def test_a_rewrite_that_keeps_the_row_count_is_detected(api: AdminApi) -> None:
    _busy_log(api, tenants=3)
    auditor = api.auditor()
    kept = api.ok("GET", "/audit/checkpoints/latest", auditor)
    _forget_stored_checkpoints(api)
    _rewrite_without(api, "no action has this prefix")  # same rows, but re-timed below
    _sql(api, "UPDATE audit_events SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 2")
    _rewrite_without(api, "no action has this prefix")  # recompute every hash again

    assert api.ok("GET", "/audit/verification", auditor)["ok"] is True
    verdict = api.ok("POST", "/audit/verification", auditor, json={"checkpoints": [kept]})
    assert verdict["ok"] is False
    assert "was rewritten" in verdict["reason"]


def test_forged_checkpoints_are_refused(api: AdminApi, tmp_path: Path) -> None:
    _busy_log(api, tenants=2)
    auditor = api.auditor()
    real = api.ok("GET", "/audit/checkpoints/latest", auditor)
    impostor = Ed25519PrivateKey.generate()
    forged = sign_checkpoint(Checkpoint(seq=999, head_hash="a" * 64, at="2026-01-01"), impostor)

    response = api.call("POST", "/audit/verification", auditor, json={"checkpoints": [forged]})
    assert response.status_code == 422
    assert response.json()["code"] == "checkpoint_bad_signature"
    altered: dict[str, Any] = json.loads(json.dumps(real))
    altered["checkpoint"]["seq"] += 5
    response = api.call("POST", "/audit/verification", auditor, json={"checkpoints": [altered]})
    assert response.status_code == 422
    assert "altered" in response.json()["message"]

    # a row slipped into the coordinator's own table without its key is named too
    with sqlite3.connect(api.data_dir / "admin.db") as db:
        db.execute(
            "INSERT INTO audit_checkpoints VALUES (999, ?, 'x', ?)",
            ("a" * 64, json.dumps(forged, sort_keys=True)),
        )
    verdict = api.ok("GET", "/audit/verification", auditor)
    assert verdict["ok"] is False
    assert "stored checkpoint of row 999 is not valid" in verdict["reason"]


def test_tenant_admins_may_keep_checkpoints_but_not_read_the_log(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")
    assert api.call("GET", "/audit/checkpoints/latest", tenant.headers).status_code == 200
    assert api.call("GET", "/audit/events", tenant.headers).status_code == 403


# -- the signatures themselves --------------------------------------------------------------


def test_two_heads_signed_for_one_row_prove_two_logs() -> None:
    first = Checkpoint(seq=5, head_hash="a" * 64, at="t1")
    other = Checkpoint(seq=5, head_hash="b" * 64, at="t2")
    problems = chain_problems([first, other], 9, {5: "a" * 64}.get)
    assert len(problems) == 1
    assert "signed two logs" in problems[0]
    assert chain_problems([first], 9, {5: "a" * 64}.get) == []


def test_signatures_are_bound_to_their_kind_of_document() -> None:
    key = Ed25519PrivateKey.generate()
    pem = public_key_pem(key)
    body = Checkpoint(seq=3, head_hash="c" * 64, at="t").body()
    signature = sign_detached("lepton-audit-checkpoint/1", body, key)
    verify_detached("lepton-audit-checkpoint/1", body, signature, pem)

    with pytest.raises(SignatureError) as wrong_domain:
        verify_detached("lepton-privacy-report/1", body, signature, pem)
    assert wrong_domain.value.code == "signature-wrong-domain"
    relabelled = {**signature, "domain": "lepton-privacy-report/1"}
    with pytest.raises(SignatureError) as relabel:
        verify_detached("lepton-privacy-report/1", body, relabelled, pem)
    assert relabel.value.code == "signature-mismatch"
    with pytest.raises(SignatureError) as foreign:
        verify_detached(
            "lepton-audit-checkpoint/1",
            body,
            signature,
            public_key_pem(Ed25519PrivateKey.generate()),
        )
    assert foreign.value.code == "signature-foreign-key"
    with pytest.raises(CheckpointError) as malformed:
        verify_checkpoint({"checkpoint": {**body, "seq": 0}, "signature": signature}, pem)
    assert malformed.value.code == "checkpoint-malformed"
