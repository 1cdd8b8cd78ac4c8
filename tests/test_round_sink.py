"""The ServerApp's journal: plain for runs submitted outside the admin API, recording in the
admin database for runs started through it."""

from __future__ import annotations

from pathlib import Path

from coordinator.fl.journal import RunJournal, read_journal
from coordinator.services.round_sink import LedgerJournal, open_journal
from lepton_fl.config import FederationSpec, Member, PrivacySpec, RunSpec


def _run(tmp_path: Path, **admin: str) -> RunSpec:
    spec = FederationSpec(name="f", task="breast_cancer", privacy=PrivacySpec(target_epsilon=1))
    return RunSpec(
        federation=spec,
        members=tuple(Member(name=name, node_id=i) for i, name in enumerate("abc", start=1)),
        journal_path=str(tmp_path / "run" / "journal.jsonl"),
        **admin,  # type: ignore[arg-type]
    )


def test_run_without_admin_database_gets_a_plain_journal(tmp_path: Path) -> None:
    journal = open_journal(_run(tmp_path))

    journal.write("run_started", flower_run_id=1)

    assert type(journal) is RunJournal
    assert read_journal(journal.path).of("run_started")


def test_run_from_the_admin_api_records_in_its_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'admin.db'}"

    journal = open_journal(_run(tmp_path, admin_database_url=url, admin_run_id="r-1"))

    assert isinstance(journal, LedgerJournal)
    assert journal.run_id == "r-1"
    assert journal.db.url == url
