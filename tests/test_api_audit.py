"""The audit log through the API: every state change is a chained row; tampering is named."""

from __future__ import annotations

import sqlite3

from admin_support import AdminApi


def test_state_changes_are_audited_in_order(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")
    api.node(tenant, "ward")

    events = api.ok("GET", "/audit/events", api.admin)

    actions = [e["action"] for e in events]
    assert actions[:3] == ["api_key.create", "tenant.create", "api_key.create"]
    assert actions[-1] == "node.create"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(events, events[1:], strict=False))
    assert events[-1]["actor"].startswith("key:")


def test_chain_verification_names_the_first_altered_row(api: AdminApi) -> None:
    for i in range(4):
        api.tenant(f"t-{i}")
    assert api.ok("GET", "/audit/verification", api.admin)["ok"] is True

    with sqlite3.connect(api.data_dir / "admin.db") as db:
        db.execute("DROP TRIGGER audit_events_no_update")
        db.execute("UPDATE audit_events SET target = 'tenant:forged' WHERE seq = 4")

    verdict = api.ok("GET", "/audit/verification", api.auditor())
    assert verdict["ok"] is False
    assert verdict["first_broken_seq"] == 4
    assert "Row 4 was altered" in verdict["reason"]


def test_a_deleted_row_is_named(api: AdminApi) -> None:
    for i in range(3):
        api.tenant(f"d-{i}")

    with sqlite3.connect(api.data_dir / "admin.db") as db:
        db.execute("DROP TRIGGER audit_events_no_delete")
        db.execute("DELETE FROM audit_events WHERE seq = 2")

    verdict = api.ok("GET", "/audit/verification", api.admin)
    assert verdict["first_broken_seq"] == 3
    assert "missing" in verdict["reason"]


def test_tenant_admin_may_not_read_the_audit_log(api: AdminApi) -> None:
    tenant = api.tenant("hospital-a")

    assert api.call("GET", "/audit/events", tenant.headers).status_code == 403
    assert api.call("GET", "/audit/verification", tenant.headers).status_code == 403
