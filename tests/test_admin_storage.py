"""The storage contract of the admin service, run against every backend: a real SQLite file
and a real PostgreSQL (the `database_url` fixture). Services are called directly; the
SuperLink is replaced by `KeyRegistry`/`Launcher` below, which only record what they were
asked (the API and end-to-end tests use a real SuperLink)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from signing_support import TEST_KEY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coordinator.db import Database
from coordinator.fl.journal import (
    NodeRound,
    RoundRecord,
    RunEnded,
    RunJournal,
    RunStarted,
    event_to_json,
)
from coordinator.services import audit, federations, keys, ledger, nodes, runs, tenants
from coordinator.services.common import Actor
from coordinator.services.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
)
from coordinator.services.federations import FederationDefinition
from coordinator.services.round_sink import JournalFollower
from coordinator.services.runs import RunSettings
from lepton_fl.config import RunSpec, SecureAggregationSpec
from lepton_fl.crypto import create_node_key
from lepton_fl.crypto.checkpoint import verify_checkpoint
from lepton_fl.crypto.release import public_key_pem
from lepton_fl.wire import PrivacyCharge

ADMIN = Actor(role="platform_admin", label="test-admin")


class KeyRegistry:
    """Assigns node ids like the SuperLink does and remembers what is registered."""

    def __init__(self) -> None:
        self.registered: dict[int, str] = {}
        self._next = 1000

    def register(self, public_key: str, *, name: str) -> int:
        self._next += 1
        self.registered[self._next] = public_key
        return self._next

    def unregister(self, flower_node_id: int) -> None:
        del self.registered[flower_node_id]


class Launcher:
    """Remembers submitted runs."""

    def __init__(self) -> None:
        self.submitted: list[RunSpec] = []
        self.stopped: list[int] = []

    def submit(self, run: RunSpec, *, work_dir: Path) -> int:
        self.submitted.append(run)
        return len(self.submitted)

    def stop(self, flower_run_id: int) -> None:
        self.stopped.append(flower_run_id)


def _tenant_admin(db: Database, name: str) -> Actor:
    tenant = tenants.create_tenant(db, ADMIN, name=name)
    _, key = keys.create_key(db, ADMIN, role="tenant_admin", tenant_id=tenant.id)
    return keys.authenticate(db, key)


def _enrolled(
    db: Database, actor: Actor, registry: KeyRegistry, name: str, tmp_path: Path, budget: float = 8
) -> str:
    node, token = nodes.create_node(db, actor, name=name, epsilon_budget=budget)
    public_key = create_node_key(tmp_path / "keys", name).public_key.read_text()
    nodes.enroll_node(db, token=token, public_key=public_key, registry=registry)
    return node.id


def _definition(name: str = "fed", **overrides: object) -> FederationDefinition:
    body: dict[str, object] = {
        "name": name,
        "task": "breast_cancer",
        "rounds": 2,
        "min_participants": 3,
        "privacy": {"target_epsilon": 2.0},
    }
    body.update(overrides)
    return FederationDefinition.model_validate(body)


def test_schema_upgrade_is_idempotent(db: Database) -> None:
    db.upgrade()

    with db.read() as session:
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == "0005"


def test_api_key_is_stored_only_as_a_slow_hash(db: Database) -> None:
    row, key = keys.create_key(db, ADMIN, role="auditor")

    assert key.startswith(f"lfk_{row.prefix}_")
    assert key not in row.key_hash
    assert row.key_hash.startswith("$argon2")
    assert keys.authenticate(db, key).role == "auditor"


def test_revoked_key_stops_working(db: Database) -> None:
    row, key = keys.create_key(db, ADMIN, role="auditor")
    keys.authenticate(db, key)

    keys.revoke_key(db, ADMIN, row.id)

    with pytest.raises(UnauthenticatedError, match="revoked"):
        keys.authenticate(db, key)


def test_disabled_tenant_keys_and_nodes_stop_working(db: Database, tmp_path: Path) -> None:
    registry = KeyRegistry()
    tenant = tenants.create_tenant(db, ADMIN, name="bank")
    _, key = keys.create_key(db, ADMIN, role="tenant_admin", tenant_id=tenant.id)
    actor = keys.authenticate(db, key)
    node_id = _enrolled(db, actor, registry, "branch", tmp_path)
    assert len(registry.registered) == 1

    tenants.disable_tenant(db, ADMIN, tenant.id, registry=registry)

    with pytest.raises(UnauthenticatedError, match="disabled"):
        keys.authenticate(db, key)
    assert registry.registered == {}
    assert nodes.get_node(db, ADMIN, node_id).state == "revoked"


def test_duplicate_tenant_name_conflicts(db: Database) -> None:
    tenants.create_tenant(db, ADMIN, name="same")

    with pytest.raises(ConflictError):
        tenants.create_tenant(db, ADMIN, name="same")


def test_enrollment_maps_the_registered_node_id(db: Database, tmp_path: Path) -> None:
    registry = KeyRegistry()
    actor = _tenant_admin(db, "hospital")

    node_id = _enrolled(db, actor, registry, "ward", tmp_path)

    node = nodes.get_node(db, actor, node_id)
    assert node.state == "enrolled"
    assert int(str(node.flower_node_id)) in registry.registered
    assert node.token_hash is None


def test_tenant_isolation_in_the_services(db: Database, tmp_path: Path) -> None:
    registry = KeyRegistry()
    a, b = _tenant_admin(db, "a"), _tenant_admin(db, "b")
    node_id = _enrolled(db, a, registry, "a-node", tmp_path)

    with pytest.raises(NotFoundError):
        nodes.get_node(db, b, node_id)
    with pytest.raises(NotFoundError):
        nodes.revoke_node(db, b, node_id, registry=registry)
    with pytest.raises(NotFoundError):
        ledger.node_ledger(db, b, node_id)
    assert nodes.list_nodes(db, b) == []


def test_auditor_cannot_write(db: Database) -> None:
    auditor = Actor(role="auditor", label="auditor")

    with pytest.raises(ForbiddenError):
        tenants.create_tenant(db, auditor, name="x")


def _started_run(db: Database, tmp_path: Path, *, budget: float = 8.0) -> tuple[str, list[str]]:
    registry = KeyRegistry()
    actor = _tenant_admin(db, "clinic")
    node_ids = [_enrolled(db, actor, registry, f"site-{i}", tmp_path, budget) for i in range(3)]
    federation = federations.create_federation(db, ADMIN, _definition(), members=node_ids)
    run = runs.start_run(
        db,
        ADMIN,
        federation.id,
        launcher=Launcher(),
        settings=RunSettings(runs_dir=tmp_path / "runs"),
        signing_key=TEST_KEY,
    )
    return run.id, node_ids


def _round(rnd: int, names: list[str], epsilon: float) -> RoundRecord:
    charge = PrivacyCharge(
        noise_multiplier=1.2,
        sample_rate=0.05,
        steps=30,
        delta=1e-5,
        accountant="rdp",
        epsilon=epsilon,
        epsilon_budget=8.0,
    )
    return RoundRecord(
        round=rnd,
        seconds=2.0,
        participants=tuple(names),
        num_examples=300,
        nodes={n: NodeRound(status="ok", charge=charge) for n in names},
    )


def test_record_round_writes_round_charges_and_audit_together(db: Database, tmp_path: Path) -> None:
    run_id, node_ids = _started_run(db, tmp_path)
    names = ["site-0", "site-1", "site-2"]

    assert ledger.record_round(db, run_id, _round(1, names, 0.5))
    assert not ledger.record_round(db, run_id, _round(1, names, 0.5))  # idempotent
    ledger.record_round(db, run_id, _round(2, names, 0.7))

    report = ledger.node_ledger(db, ADMIN, node_ids[0])
    assert [e.round for e in report.history] == [1, 2]
    assert report.epsilon_spent > 0
    assert report.epsilon_remaining == pytest.approx(8.0 - report.epsilon_spent)
    assert report.federations[0].rounds == 2
    actions = [e.action for e in audit.list_events(db, ADMIN, limit=1000)]
    assert actions.count("run.round") == 2
    assert runs.get_run(db, ADMIN, run_id).rounds_completed == 2


def test_run_refused_when_a_member_budget_would_be_exceeded(db: Database, tmp_path: Path) -> None:
    with pytest.raises(ConflictError) as refused:
        _started_run(db, tmp_path, budget=1.5)

    assert refused.value.code == "budget_exceeded"
    assert "site-0" in refused.value.message
    assert "1.5" in refused.value.message


def test_second_run_of_a_federation_conflicts(db: Database, tmp_path: Path) -> None:
    run_id, _ = _started_run(db, tmp_path)
    federation_id = runs.get_run(db, ADMIN, run_id).federation_id

    with pytest.raises(ConflictError, match="already has run"):
        runs.start_run(
            db,
            ADMIN,
            federation_id,
            launcher=Launcher(),
            settings=RunSettings(runs_dir=tmp_path / "runs"),
            signing_key=TEST_KEY,
        )


def test_audit_chain_verifies_and_names_a_tampered_row(db: Database) -> None:
    for i in range(5):
        tenants.create_tenant(db, ADMIN, name=f"t{i}")
    assert audit.verify_chain(db, ADMIN).ok

    _tamper(db, seq=3)

    verdict = audit.verify_chain(db, ADMIN)
    assert not verdict.ok
    assert verdict.first_broken_seq == 3
    assert verdict.events_checked == 2


def _tamper(db: Database, *, seq: int) -> None:
    """What an attacker with database access would do: drop the guard, edit a row."""
    with db.write_engine.begin() as connection:
        if db.dialect == "sqlite":
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
        else:
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        connection.execute(
            text("UPDATE audit_events SET actor = 'someone-else' WHERE seq = :seq"), {"seq": seq}
        )


def test_database_refuses_to_update_or_delete_audit_rows(db: Database) -> None:
    tenants.create_tenant(db, ADMIN, name="t")

    with pytest.raises(DBAPIError), db.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'x'"))
    with pytest.raises(DBAPIError), db.write_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events"))


def test_checkpoints_are_signed_per_transaction_and_append_only(db: Database) -> None:
    key = TEST_KEY
    audit.enable_checkpoints(db, key)
    tenants.create_tenant(db, ADMIN, name="t")
    tenants.create_tenant(db, ADMIN, name="u")

    signed = audit.list_checkpoints(db, ADMIN)
    heads = [verify_checkpoint(c, public_key_pem(key)) for c in signed]
    assert [c.seq for c in heads] == [1, 2]
    assert audit.verify_chain(db, ADMIN, public_key=public_key_pem(key)).checkpoints_checked == 2
    with pytest.raises(DBAPIError), db.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_checkpoints SET head_hash = 'x'"))
    with pytest.raises(DBAPIError), db.write_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_checkpoints"))


def test_concurrent_writers_keep_one_chain(db: Database) -> None:
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            tenants.create_tenant(db, ADMIN, name=f"c{i}")
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    verdict = audit.verify_chain(db, ADMIN)
    assert verdict.ok
    assert verdict.events_checked == 12


def test_the_admin_service_reads_rounds_and_the_end_from_the_journal(
    db: Database, tmp_path: Path
) -> None:
    """The ServerApp has no database credentials: it only journals. The follower records
    each round once, waits for a line still being written, and reads again from the start
    after a restart without recording anything twice."""
    run_id, node_ids = _started_run(db, tmp_path)
    names = ["site-0", "site-1", "site-2"]
    journal = RunJournal(Path(runs.get_run(db, ADMIN, run_id).journal_path))
    journal.append(_started(77))
    journal.append(_round(1, names, 0.5))
    second = json.dumps(event_to_json(_round(2, [], 0.0)))
    with journal.path.open("a") as handle:
        handle.write(second[:30])  # the ServerApp is mid-write

    JournalFollower(db).poll()

    run = runs.get_run(db, ADMIN, run_id)
    assert (run.state, run.flower_run_id, run.rounds_completed) == ("running", "77", 1)
    with journal.path.open("a") as handle:
        handle.write(second[30:] + "\n")
    journal.append(RunEnded(state="finished", rounds_completed=2))
    restarted = JournalFollower(db)  # a coordinator restart: reads from the start again
    restarted.poll()
    restarted.poll()

    run = runs.get_run(db, ADMIN, run_id)
    assert (run.state, run.rounds_completed) == ("finished", 2)
    assert [r.round for r in runs.run_rounds(db, ADMIN, run_id)] == [1, 2]
    assert [e.round for e in ledger.node_ledger(db, ADMIN, node_ids[0]).history] == [1]


def _started(flower_run_id: int) -> RunStarted:
    return RunStarted(
        flower_run_id=flower_run_id,
        federation="fed",
        federation_digest="0" * 64,
        rounds=2,
        members=(),
        aggregation="fedavg",
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def test_the_follower_logs_and_skips_a_line_that_is_not_an_event(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_id, _ = _started_run(db, tmp_path)
    names = ["site-0", "site-1", "site-2"]
    journal = RunJournal(Path(runs.get_run(db, ADMIN, run_id).journal_path))
    journal.append(_started(78))
    with journal.path.open("a") as handle:
        handle.write('{"event": "round", "round": "one"}\n')
    journal.append(_round(1, names, 0.5))
    journal.append(RunEnded(state="failed", rounds_completed=1, reason="boom", kind="Error"))

    with caplog.at_level(logging.ERROR, logger="coordinator.services.round_sink"):
        JournalFollower(db).poll()

    run = runs.get_run(db, ADMIN, run_id)
    assert (run.state, run.failure, run.rounds_completed) == ("failed", "boom", 1)
    (logged,) = caplog.records
    assert f"{journal.path}, line 2: round.round: expected a whole number" in logged.getMessage()
