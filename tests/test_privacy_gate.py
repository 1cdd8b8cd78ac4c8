"""The node's privacy gate against a coordinator that bends the protocol (issue 10).

Real trainers, a real SQLite ledger, signed runs: nothing leaves a node that DP does not
cover, evaluation happens only when and as often as the signed spec schedules it, and a
round must fit the site's budget under the site's own accountant too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from signing_support import pin_key, signed
from test_ledger_chain import fill_until_full
from trainer_support import TrainerFactory

from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.evaluation import evaluate, record_losses
from lepton_fl.config import FederationSpec, PrivacySpec, TrainingSpec
from lepton_fl.models import set_weights
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.privacy.evaluation import release_confusion
from lepton_fl.privacy.membership import JOINT_SENSITIVITY, NUM_BINS, loss_histogram
from lepton_fl.wire import (
    Envelope,
    evaluate_reply_from_records,
    evaluate_reply_to_records,
    train_reply_to_records,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=3,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5),
    training=TrainingSpec(local_epochs=2, batch_size=32, learning_rate=0.3),
)
DATASET = "breast_cancer:site-0-of-3"
MakeTrainer = Callable[..., NodeTrainer]


@pytest.fixture
def make_trainer(tmp_path: Path) -> Iterator[MakeTrainer]:
    factory = TrainerFactory()

    def make(*, budget: float = 10.0, accountant: str = "rdp", state: str = "state") -> NodeTrainer:
        (tmp_path / "ca.pem").write_text("unused here")
        (tmp_path / "key").write_text("unused here")
        settings = NodeSettings.model_validate(
            {
                "node": {"name": "clinic", "state_dir": str(tmp_path / state)},
                "data": {"task": "breast_cancer", "partition": "site-0-of-3"},
                "privacy": {
                    "epsilon_budget": budget,
                    "accountant": accountant,
                    "federations": ["clinic-fed"],
                    "require_secure_aggregation": False,  # plain rounds, in process
                },
                "superlink": {
                    "address": "127.0.0.1:1",
                    "root_certificates": str(tmp_path / "ca.pem"),
                },
                "auth": {"private_key": str(tmp_path / "key")},
                "coordinator": pin_key(tmp_path),
            }
        )
        return factory.trainer(settings)

    yield make
    factory.close()


def _envelope(run_id: int = 1) -> Envelope:
    return Envelope(kind="train", run_id=run_id, message_id="m", node_id=9)


def _run(trainer: NodeTrainer, fed: FederationSpec, run_id: int = 1, **kw: Any) -> list[Any]:
    replies = [
        trainer.train(_envelope(run_id), signed(fed, rnd, **kw)) for rnd in range(1, fed.rounds + 1)
    ]
    assert all(r.status == "ok" for r in replies), [r.reason for r in replies]
    return replies


def _opacus_rdp_epsilon(steps: list[AccountantStep], delta: float) -> float:
    accountant = RDPAccountant()
    for step in steps:
        for _ in range(step.steps):
            accountant.step(noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


# -- the crafted-weights loss attack ------------------------------------------------------------


def test_no_loss_leaves_the_node_even_for_crafted_weights(
    make_trainer: MakeTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's attack: zero weights make the loss exactly ln 2 unless a target record
    pulls it away. The reply must not carry the loss (or anything but the update, the count,
    timings and the charge); the node keeps the loss in its own log."""
    trainer = make_trainer()
    _, initial = trainer._engine(FED)
    crafted = [np.zeros_like(w) for w in initial]

    with caplog.at_level(logging.INFO, logger="lepton.node.privacy"):
        reply = trainer.train(_envelope(), signed(FED, 1, crafted))

    assert reply.status == "ok"
    records = train_reply_to_records(reply)
    assert set(records["metrics"]) == {"num-examples", "train-seconds", "node-seconds"}
    assert not any("loss" in key or key.startswith("eval-") for key in records["metrics"])
    assert set(records) == {"status", "arrays", "metrics", "privacy"}
    assert "train loss" in caplog.text  # kept at the node


# -- evaluation: only scheduled, once, noised, charged -------------------------------------------


def test_ad_hoc_evaluation_requests_are_refused_and_charge_nothing(
    make_trainer: MakeTrainer,
) -> None:
    trainer = make_trainer()
    before = trainer.evaluate(_envelope(), signed(FED, 1))  # bisection probe before any round
    _run(trainer, FED)
    mid_run = trainer.evaluate(_envelope(), signed(FED, 2))
    unscheduled_fed = FED.model_copy(
        update={"privacy": PrivacySpec(target_epsilon=2.0, delta=1e-5, evaluation_epsilon=0.0)}
    )
    none_scheduled = trainer.evaluate(_envelope(2), signed(unscheduled_fed, 3, admin_run_id="r2"))

    for reply in (before, mid_run, none_scheduled):
        assert (reply.status, reply.code) == ("refused", "evaluation_not_scheduled")
        assert reply.evaluation is None
    assert [e.kind for e in trainer.ledger.entries()] == ["train"] * 3


def test_scheduled_evaluation_is_noised_charged_and_reported(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer()
    trained = _run(trainer, FED)
    weights = trained[-1].weights

    reply = trainer.evaluate(_envelope(), signed(FED, 3, weights))
    repeat = trainer.evaluate(_envelope(), signed(FED, 3, weights))  # the bisection's next probe

    assert reply.status == "ok"
    assert reply.evaluation is not None
    assert reply.evaluation.loss is None  # loss and ROC-AUC stay at the node
    assert reply.evaluation.roc_auc is None
    # charged before the reply: one evaluation row keyed like the round, sample rate 1
    evaluation_rows = [e for e in trainer.ledger.entries() if e.kind == "evaluate"]
    assert [(e.run_id, e.round) for e in evaluation_rows] == [("1", 3)]
    row = evaluation_rows[0]
    assert (row.sample_rate, row.steps) == (1.0, 1)
    assert row.noise_multiplier > 1.0
    assert reply.charge is not None
    assert reply.charge.noise_multiplier == row.noise_multiplier
    # the epsilon the node reports includes the release, as Opacus composes it
    history = trainer.ledger.history(DATASET)
    assert reply.epsilon is not None
    assert reply.epsilon == pytest.approx(_opacus_rdp_epsilon(history, 1e-5), rel=1e-9)
    assert trained[-1].charge is not None
    assert reply.epsilon > trained[-1].charge.epsilon
    # the whole run (training + evaluation) stays within the federation's target
    assert reply.epsilon <= FED.privacy.target_epsilon
    # asked again: refused, nothing more charged (also after a restart: the ledger decides)
    assert (repeat.status, repeat.code) == ("refused", "evaluation_repeated")
    trainer.ledger.close()
    restarted = make_trainer()
    again = restarted.evaluate(_envelope(), signed(FED, 3, weights))
    assert (again.status, again.code) == ("refused", "evaluation_repeated")
    assert len(restarted.ledger.entries()) == 4

    # the counts released are the exact ones plus noise of the charged size
    engine, _ = restarted._engine(FED)
    set_weights(engine.model, weights)
    test = restarted.split.test
    exact = evaluate(engine.model, test.inputs, test.labels, device=torch.device("cpu"))
    assert sum(map(sum, reply.evaluation.confusion or ())) == reply.evaluation.num_examples
    draws = np.array(
        [
            release_confusion(exact.confusion, noise_multiplier=row.noise_multiplier).confusion
            for _ in range(200)
        ]
    )
    assert np.mean(np.all(draws == np.asarray(exact.confusion), axis=(1, 2))) < 0.1


# -- the membership audit: released with the evaluation, at its charge ---------------------------

AUDITED = FED.model_copy(
    update={"privacy": PrivacySpec(target_epsilon=2.0, delta=1e-5, membership_audit=True)}
)


def test_membership_audit_rides_on_the_evaluation_at_the_same_charge(
    make_trainer: MakeTrainer,
) -> None:
    """Asked for by the signed spec, the audit's loss histograms leave with the evaluation's
    counts as one release at sqrt(2) times the noise, charged exactly as the evaluation
    alone: same calibrated noise multiplier, same single step, same epsilon."""
    plain, audited = make_trainer(state="plain"), make_trainer(state="audited")
    weights = _run(plain, FED)[-1].weights
    _run(audited, AUDITED)
    without = plain.evaluate(_envelope(), signed(FED, 3, weights))
    with_audit = audited.evaluate(_envelope(), signed(AUDITED, 3, weights))

    assert without.status == with_audit.status == "ok"
    assert without.membership is None
    assert "mia-members" not in evaluate_reply_to_records(without)["metrics"]
    assert with_audit.membership is not None
    assert without.charge
    assert with_audit.charge
    assert with_audit.charge.noise_multiplier == without.charge.noise_multiplier
    assert (with_audit.charge.sample_rate, with_audit.charge.steps) == (1.0, 1)
    assert with_audit.epsilon == pytest.approx(without.epsilon, rel=1e-12)
    assert [e.kind for e in audited.ledger.entries()] == ["train"] * 3 + ["evaluate"]
    release = with_audit.membership
    assert release.noise_std == pytest.approx(
        JOINT_SENSITIVITY * with_audit.charge.noise_multiplier
    )
    assert len(release.members) == len(release.nonmembers) == NUM_BINS
    # it travels and decodes as sent; a second evaluation is refused as before
    decoded = evaluate_reply_from_records(evaluate_reply_to_records(with_audit))
    assert decoded.membership == release
    again = audited.evaluate(_envelope(), signed(AUDITED, 3, weights))
    assert (again.status, again.code, again.membership) == ("refused", "evaluation_repeated", None)


def test_an_audit_the_signed_spec_does_not_ask_for_is_refused(make_trainer: MakeTrainer) -> None:
    """A coordinator that turns the audit on in the message, under an authorization signed
    for the spec without it, gets a refusal and nothing is charged."""
    trainer = make_trainer()
    weights = _run(trainer, FED)[-1].weights
    forged = dataclasses.replace(signed(FED, 3, weights), federation=AUDITED)
    reply = trainer.evaluate(_envelope(), forged)
    assert reply.status == "refused"
    assert reply.membership is None
    assert reply.evaluation is None
    assert [e.kind for e in trainer.ledger.entries()] == ["train"] * 3


def _joint_vector(trainer: NodeTrainer, weights: list[np.ndarray], split: Any) -> np.ndarray:
    """The exact vector the joint release noises: confusion counts, then both histograms."""
    engine, _ = trainer._engine(FED)
    set_weights(engine.model, weights)
    cpu = torch.device("cpu")
    confusion = evaluate(engine.model, split.test.inputs, split.test.labels, device=cpu).confusion
    members = record_losses(engine.model, split.train.inputs, split.train.labels, device=cpu)
    nonmembers = record_losses(engine.model, split.test.inputs, split.test.labels, device=cpu)
    return np.array(
        [*np.ravel(confusion), *loss_histogram(members), *loss_histogram(nonmembers)], dtype=float
    )


def test_one_record_moves_the_joint_release_by_at_most_sqrt2(make_trainer: MakeTrainer) -> None:
    """The sensitivity the charge relies on, on the real model and rows: removing any one
    held-out row moves the vector by exactly sqrt(2) (one confusion cell, one held-out bin),
    any one training row by exactly 1 (one training bin; the model is the one released)."""
    trainer = make_trainer()
    weights = _run(trainer, FED)[-1].weights
    split = trainer.split
    full = _joint_vector(trainer, weights, split)
    for which, expected in (("test", math.sqrt(2)), ("train", 1.0)):
        part = getattr(split, which)
        for index in (0, len(part.labels) // 2, len(part.labels) - 1):
            keep = np.arange(len(part.labels)) != index
            smaller = dataclasses.replace(
                part, inputs=tuple(a[keep] for a in part.inputs), labels=part.labels[keep]
            )
            neighbour = dataclasses.replace(split, **{which: smaller})
            moved = np.linalg.norm(full - _joint_vector(trainer, weights, neighbour))
            assert moved == pytest.approx(expected), (which, index)
    assert pytest.approx(math.sqrt(2)) == JOINT_SENSITIVITY


# -- budget by the stricter accountant ----------------------------------------------------------


def test_round_over_budget_under_the_sites_accountant_is_refused(make_trainer: MakeTrainer) -> None:
    """Site budget 7.0; a PRV federation's round fits under PRV but the site's RDP counts it
    over: refused. The same node with [privacy].accountant = "prv" admits it."""
    prv_fed = FED.model_copy(
        update={"privacy": PrivacySpec(target_epsilon=2.0, delta=1e-5, accountant="prv")}
    )
    past = AccountantStep(1.0, 0.1, 75)  # an older run's spending on this dataset

    def seeded(accountant: str, state: str) -> NodeTrainer:
        trainer = make_trainer(budget=7.0, accountant=accountant, state=state)
        trainer.ledger.record(
            dataset_id=DATASET, run_id="older", round=1, step=past, accountant="prv",
            delta=1e-5, epsilon_after=6.0, num_examples=142, federation="clinic-fed",
        )  # fmt: skip
        return trainer

    lenient = seeded("prv", "prv-site")
    admitted = lenient.train(_envelope(), signed(prv_fed, 1))
    assert admitted.status == "ok", admitted.reason
    assert admitted.charge is not None
    planned = AccountantStep(
        admitted.charge.noise_multiplier, admitted.charge.sample_rate, admitted.charge.steps
    )
    assert epsilon_spent([past, planned], delta=1e-5, accountant="prv") <= 7.0
    assert epsilon_spent([past], delta=1e-5, accountant="rdp") <= 7.0  # it is this round ...
    assert epsilon_spent([past, planned], delta=1e-5, accountant="rdp") > 7.0  # ... that crosses

    strict = seeded("rdp", "rdp-site")
    refused = strict.train(_envelope(), signed(prv_fed, 1))

    assert (refused.status, refused.code) == ("refused", "budget_exhausted")
    assert "[privacy].accountant = 'rdp'" in refused.reason
    assert "it would raise epsilon from 6.96 to 7.05" in refused.reason
    assert len(strict.ledger.entries()) == 1  # nothing recorded


def test_node_ledger_report_shows_evaluation_and_epsilon_per_federation(
    make_trainer: MakeTrainer, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from lepton.cli import app

    trainer = make_trainer()
    trained = _run(trainer, FED)
    assert trainer.evaluate(_envelope(), signed(FED, 3, trained[-1].weights)).status == "ok"
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
name = "clinic"
state_dir = "{tmp_path / "state"}"
[data]
task = "breast_cancer"
partition = "site-0-of-3"
[privacy]
epsilon_budget = 10.0
federations = ["clinic-fed"]
[superlink]
address = "127.0.0.1:1"
root_certificates = "{tmp_path / "ca.pem"}"
[auth]
private_key = "{tmp_path / "key"}"
[coordinator]
public_key = "{tmp_path / "coordinator.pem"}"
"""
    )

    result = CliRunner().invoke(app, ["node", "ledger", "--config", str(config), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [h["kind"] for h in report["history"]] == ["train"] * 3 + ["evaluate"]
    rows = {(r["dataset_id"], r["federation"]): r for r in report["by_federation"]}
    fed_row = rows[(DATASET, "clinic-fed")]
    assert fed_row["evaluations"] == 1
    assert fed_row["epsilon_training"] < fed_row["epsilon"] == pytest.approx(report["epsilon"])
    assert rows[(DATASET, "*")]["epsilon"] == pytest.approx(report["epsilon"])
    text = CliRunner().invoke(app, ["node", "ledger", "--config", str(config)]).output
    assert "evaluation release" in text
    assert "federation clinic-fed: epsilon" in text


# -- a ledger that cannot be written: a named refusal, nothing sent -----------------------------


def test_round_whose_charge_cannot_be_recorded_is_refused_and_sends_nothing(
    make_trainer: MakeTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger fills up (SQLite's own SQLITE_FULL, from a page limit on the trainer's
    connection) between admission and the charge: the trained update stays on the node."""
    trainer = make_trainer()
    assert trainer.train(_envelope(), signed(FED, 1)).status == "ok"
    fill_until_full(trainer.ledger)
    before = trainer.ledger.entries()

    with caplog.at_level(logging.INFO):
        reply = trainer.train(_envelope(), signed(FED, 2))

    assert (reply.status, reply.code) == ("refused", "ledger_unwritable")
    assert "database or disk is full" in reply.reason
    assert (reply.weights, reply.charge) == ([], None)
    assert set(train_reply_to_records(reply)) == {"status"}  # no update, no charge
    assert trainer.ledger.entries() == before
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in problems] == ["ERROR"]  # one line, with the cause
    assert "database or disk is full" in problems[0].getMessage()
    assert problems[0].exc_info is None
    assert "cannot rollback" not in caplog.text
    # room again: the same round trains and is charged, on an intact chain
    conn = trainer.ledger._conn
    assert conn is not None
    conn.execute("PRAGMA max_page_count = 1000000")
    assert trainer.train(_envelope(), signed(FED, 2)).status == "ok"
    assert trainer.ledger.verify().rows == len(before) + 1


def test_requests_are_refused_while_the_ledger_is_read_only(make_trainer: MakeTrainer) -> None:
    """SQLite refuses every write ("attempt to write a readonly database"): the run's
    binding cannot be recorded, so the node refuses before it trains or evaluates."""
    trainer = make_trainer()
    conn = trainer.ledger._conn
    assert conn is not None
    conn.execute("PRAGMA query_only = ON")

    train = trainer.train(_envelope(), signed(FED, 1))
    evaluation = trainer.evaluate(_envelope(), signed(FED, 3))

    for reply in (train, evaluation):
        assert (reply.status, reply.code) == ("refused", "ledger_unwritable")
        assert "attempt to write a readonly database" in reply.reason
    assert evaluation.evaluation is None
    assert trainer.ledger.entries() == []


def test_round_is_refused_when_the_ledger_changed_under_the_trainer(
    make_trainer: MakeTrainer,
) -> None:
    trainer = make_trainer()
    assert trainer.train(_envelope(), signed(FED, 1)).status == "ok"
    raw = sqlite3.connect(trainer.ledger.path)  # an attacker deletes the last charge
    raw.execute("DROP TRIGGER ledger_entries_no_delete")
    raw.execute("DELETE FROM ledger_entries")
    raw.commit()
    raw.close()

    reply = trainer.train(_envelope(), signed(FED, 2))

    assert (reply.status, reply.code) == ("refused", "ledger_tampered")
    assert (reply.weights, reply.charge) == ([], None)
