"""The node trainer's rules, in process: site policy, budget, ledger, idempotence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from signing_support import pin_key, signed
from trainer_support import trainer_factory

from client_node.settings import NodeSettings
from lepton_fl.config import FederationSpec, PrivacySpec, TrainingSpec
from lepton_fl.privacy import epsilon_spent
from lepton_fl.wire import Envelope

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=3,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5),
    training=TrainingSpec(local_epochs=2, batch_size=32, learning_rate=0.3),
)


def _settings(tmp_path: Path, *, budget: float = 10.0) -> NodeSettings:
    (tmp_path / "ca.pem").write_text("unused here")
    (tmp_path / "key").write_text("unused here")
    return NodeSettings.model_validate(
        {
            "node": {"name": "clinic", "state_dir": str(tmp_path)},
            "data": {"task": "breast_cancer", "partition": "site-0-of-3"},
            "privacy": {
                "epsilon_budget": budget,
                "federations": ["clinic-fed"],
                "require_secure_aggregation": False,  # these tests send plain rounds
            },
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(tmp_path / "ca.pem")},
            "auth": {"private_key": str(tmp_path / "key")},
            "coordinator": pin_key(tmp_path),
        }
    )


@pytest.fixture
def make_trainer(tmp_path: Path) -> Iterator[object]:
    with trainer_factory() as factory:
        yield lambda *, budget=10.0: factory.trainer(_settings(tmp_path, budget=budget))


def _envelope(run_id: int = 1) -> Envelope:
    return Envelope(kind="train", run_id=run_id, message_id="m", node_id=9)


def test_trainer_trains_and_records_before_replying(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()

    reply = trainer.train(_envelope(), signed(FED, 1))

    assert reply.status == "ok"
    entries = trainer.ledger.entries()
    assert [(e.run_id, e.round) for e in entries] == [("1", 1)]
    assert reply.charge is not None
    assert reply.charge.steps == entries[0].steps
    recomputed = epsilon_spent([e.step for e in entries], delta=1e-5, accountant="rdp")
    assert reply.charge.epsilon == pytest.approx(recomputed)


def test_trainer_redelivered_round_is_not_charged_twice(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()
    first = trainer.train(_envelope(), signed(FED, 1))

    again = trainer.train(_envelope(), signed(FED, 1))

    assert again is first
    assert len(trainer.ledger.entries()) == 1


def test_trainer_round_recorded_before_a_restart_is_refused(make_trainer) -> None:  # type: ignore[no-untyped-def]
    first = make_trainer()
    first.train(_envelope(), signed(FED, 1))
    first.ledger.close()  # the process ends; its cache is gone
    restarted = make_trainer()  # a new trainer process: same ledger file

    reply = restarted.train(_envelope(), signed(FED, 1))

    assert (reply.status, reply.code) == ("refused", "already_trained")
    assert len(restarted.ledger.entries()) == 1


def test_trainer_refuses_over_budget_before_training(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(budget=0.3)

    reply = trainer.train(_envelope(), signed(FED, 1))

    assert (reply.status, reply.code) == ("refused", "budget_exhausted")
    assert "0.30" in reply.reason or "0.3" in reply.reason
    assert trainer.ledger.entries() == []


def test_trainer_budget_composes_across_runs(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(budget=2.05)  # the first run (calibrated to 2.0) fits, no more
    for rnd in (1, 2, 3):
        assert trainer.train(_envelope(1), signed(FED, rnd)).status == "ok"

    second_run = trainer.train(_envelope(2), signed(FED, 1, admin_run_id="admin-run-2"))

    assert (second_run.status, second_run.code) == ("refused", "budget_exhausted")
    assert len(trainer.ledger.entries()) == 3


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"name": "other-fed"}, "federation_not_accepted"),
        ({"task": "heart_disease"}, "task_mismatch"),
        ({"privacy": PrivacySpec(target_epsilon=2.0, delta=1e-3)}, "delta_too_large"),
    ],
)
def test_trainer_site_policy_refusals(make_trainer, change: dict[str, object], code: str) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()

    reply = trainer.train(_envelope(), signed(FED.model_copy(update=change), 1))

    assert (reply.status, reply.code) == ("refused", code)
    assert reply.reason
    assert trainer.ledger.entries() == []


def test_trainer_evaluate_reports_history_epsilon(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()
    trained = [trainer.train(_envelope(), signed(FED, rnd)) for rnd in (1, 2, 3)]

    reply = trainer.evaluate(_envelope(), signed(FED, 3, trained[-1].weights))

    assert reply.status == "ok"
    assert reply.evaluation is not None
    assert reply.evaluation.confusion is not None  # noised counts, and what follows from them
    assert sum(map(sum, reply.evaluation.confusion)) == reply.evaluation.num_examples
    assert reply.evaluation.loss is None
    assert reply.evaluation.roc_auc is None
    assert trained[-1].charge is not None
    assert reply.charge is not None
    assert reply.epsilon == pytest.approx(reply.charge.epsilon)
    assert reply.epsilon > trained[-1].charge.epsilon  # the release is charged too
    recomputed = epsilon_spent(
        trainer.ledger.history("breast_cancer:site-0-of-3"), delta=1e-5, accountant="rdp"
    )
    assert reply.epsilon == pytest.approx(recomputed)
