"""The site privacy policy, in a real trainer: node.toml's [privacy] section wins.

Real `NodeTrainer`s on the breast-cancer task with Opacus DP-SGD and real ledgers on disk.
Every refusal must come before any training (the model is untouched and the ledger stays
empty), carry a stable code, and name the node.toml field that decided it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from signing_support import pin_key, signed
from trainer_support import trainer_factory

from client_node.policy import PolicyRefusedError
from client_node.settings import NodeConfigError, NodeSettings, load_node_settings
from client_node.trainer.core import NodeTrainer, RequestRefusedError
from client_node.trainer.secure import SecureAggregation
from client_node.trainer.service import handle_request
from lepton_fl.config import (
    FederationSpec,
    PrivacySpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.privacy import AccountantStep
from lepton_fl.wire import (
    Envelope,
    envelope_request,
    instruction_to_records,
    records_from_bytes,
    train_reply_from_records,
)

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=3,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0),
    training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
)
PLAIN_FED = FED.model_copy(
    update={
        "min_participants": 2,
        "secure_aggregation": SecureAggregationSpec(enabled=False),
    }
)
MakeTrainer = Callable[..., NodeTrainer]


def _settings(tmp_path: Path, **privacy: Any) -> NodeSettings:
    (tmp_path / "ca.pem").write_text("unused here")
    (tmp_path / "key").write_text("unused here")
    return NodeSettings.model_validate(
        {
            "node": {"name": "clinic", "state_dir": str(tmp_path)},
            "data": {"task": "breast_cancer", "partition": "site-0-of-3"},
            "privacy": {"epsilon_budget": 50.0, "federations": ["clinic-fed"]} | privacy,
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(tmp_path / "ca.pem")},
            "auth": {"private_key": str(tmp_path / "key")},
            "coordinator": pin_key(tmp_path),
        }
    )


@pytest.fixture
def make_trainer(tmp_path: Path) -> Iterator[MakeTrainer]:
    torch.set_num_threads(1)
    with trainer_factory() as factory:
        # a second trainer is the same node restarted: one writer per ledger file
        yield lambda **privacy: factory.trainer(_settings(tmp_path, **privacy), restart=True)


def _envelope(run_id: int = 1) -> Envelope:
    return Envelope(kind="train", run_id=run_id, message_id="m", node_id=9)


# -- every refusal: its code, the field named, nothing trained, nothing recorded -------------

REFUSALS = [
    pytest.param({}, FED.model_copy(update={"name": "other-fed"}), True,
                 "federation_not_accepted", "[privacy].federations", id="federation"),
    pytest.param({"tasks": ["heart_disease"]}, FED, True,
                 "task_not_accepted", "[privacy].tasks", id="task-list"),
    pytest.param({}, FED.model_copy(update={"task": "heart_disease"}), True,
                 "task_mismatch", "[data].task", id="task-served"),
    pytest.param({"federation_epsilon": {"clinic-fed": 1.0}}, FED, True,
                 "federation_epsilon_exceeded", "[privacy.federation_epsilon].clinic-fed = 1",
                 id="federation-epsilon-table"),
    pytest.param({"max_epsilon_per_federation": 1.5}, FED, True,
                 "federation_epsilon_exceeded", "[privacy].max_epsilon_per_federation = 1.5",
                 id="federation-epsilon-default"),
    pytest.param({"epsilon_budget": 0.3}, FED, True,
                 "budget_exhausted", "[privacy].epsilon_budget = 0.3", id="overall-budget"),
    pytest.param({"min_noise_multiplier": 20.0}, FED, True,
                 "noise_too_low", "[privacy].min_noise_multiplier = 20", id="min-noise"),
    pytest.param({"max_grad_norm": 0.5}, FED.model_copy(
        update={"privacy": PrivacySpec(target_epsilon=2.0, max_grad_norm=5.0)}), True,
                 "clipping_too_loose",
                 "[privacy].max_grad_norm = 0.5 but federation 'clinic-fed' asks for "
                 "max_grad_norm = 5", id="max-clipping"),
    pytest.param({}, FED.model_copy(
        update={"privacy": PrivacySpec(target_epsilon=2.0, delta=1e-3)}), True,
                 "delta_too_large", "[privacy].max_delta", id="delta"),
    pytest.param({}, PLAIN_FED, True, "secure_aggregation_required",
                 "[privacy].require_secure_aggregation = true", id="secagg-spec-flag"),
    pytest.param({}, PLAIN_FED, False, "secure_aggregation_required",
                 "secure_aggregation.enabled = false", id="secagg-spec-flag-plain-request"),
    pytest.param({}, FED, False, "plain_round_refused",
                 "[privacy].require_secure_aggregation = true", id="plain-train-request"),
]  # fmt: skip


@pytest.mark.parametrize(("privacy", "fed", "secure", "code", "field"), REFUSALS)
def test_each_refusal_names_its_field_and_trains_nothing(
    make_trainer: MakeTrainer,
    privacy: dict[str, Any],
    fed: FederationSpec,
    secure: bool,
    code: str,
    field: str,
) -> None:
    trainer = make_trainer(**privacy)

    reply = trainer.train(_envelope(), signed(fed, 1), secure=secure)

    assert (reply.status, reply.code) == ("refused", code)
    assert field in reply.reason
    assert reply.weights == []
    assert reply.charge is None
    assert trainer.ledger.entries() == []
    # a node that would refuse does not join a secure-aggregation session either
    if secure:
        with pytest.raises(RequestRefusedError) as caught:
            trainer.admit(_envelope(), signed(fed, 1))
        assert caught.value.code == code
    assert trainer.ledger.entries() == []


def test_spec_checks_refuse_before_any_model_is_built(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(max_grad_norm=0.5)
    loose = FED.model_copy(update={"privacy": PrivacySpec(target_epsilon=2.0, max_grad_norm=5.0)})

    reply = trainer.train(_envelope(), signed(loose, 1), secure=True)

    assert reply.code == "clipping_too_loose"
    assert trainer._engines == {}  # no engine with the federation's clipping norm


def test_accepted_request_trains_and_records_its_federation(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(
        tasks=["breast_cancer"],
        federation_epsilon={"clinic-fed": 2.5},
        max_epsilon_per_federation=0.1,  # the named cap wins over the default
        min_noise_multiplier=0.3,
        max_grad_norm=1.0,
    )

    replies = [trainer.train(_envelope(), signed(FED, rnd), secure=True) for rnd in (1, 2, 3)]

    assert [r.status for r in replies] == ["ok"] * 3
    entries = trainer.ledger.entries()
    assert [(e.round, e.federation) for e in entries] == [(1, "clinic-fed"), (2, "clinic-fed"),
                                                         (3, "clinic-fed")]  # fmt: skip
    assert replies[0].charge is not None
    assert replies[0].charge.noise_multiplier >= 0.3
    assert replies[-1].charge is not None
    assert replies[-1].charge.epsilon <= 2.5


def test_plain_rounds_train_when_the_site_allows_them(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(require_secure_aggregation=False)

    reply = trainer.train(_envelope(), signed(PLAIN_FED, 1))

    assert reply.status == "ok"
    assert [e.federation for e in trainer.ledger.entries()] == ["clinic-fed"]


def test_a_plain_train_message_through_the_service_is_refused(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer()
    data = envelope_request(_envelope(), instruction_to_records(signed(FED, 1)))

    answer = handle_request(trainer, SecureAggregation(trainer), data)

    reply = train_reply_from_records(records_from_bytes(answer))
    assert (reply.status, reply.code) == ("refused", "plain_round_refused")
    assert trainer.ledger.entries() == []


def test_a_secure_round_is_never_replayed_as_a_plain_reply(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(require_secure_aggregation=False)  # even where plain rounds are fine
    secure = trainer.train(_envelope(), signed(FED, 1), secure=True)
    assert secure.status == "ok"

    plain = trainer.train(_envelope(), signed(FED, 1))

    assert (plain.status, plain.code) == ("refused", "already_trained")
    assert plain.weights == []
    assert trainer.train(_envelope(), signed(FED, 1), secure=True) is secure
    assert len(trainer.ledger.entries()) == 1


def test_evaluation_is_not_a_plain_round(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer()  # requires secure aggregation; evaluation sends no update

    reply = trainer.evaluate(_envelope(), signed(FED, 3))  # the scheduled one: last round

    assert reply.status == "ok"
    assert [e.kind for e in trainer.ledger.entries()] == ["evaluate"]  # a DP release, charged


def test_federation_cap_counts_its_own_history_across_runs(make_trainer: MakeTrainer) -> None:
    trainer = make_trainer(federation_epsilon={"clinic-fed": 2.5})
    for rnd in (1, 2, 3):
        assert trainer.train(_envelope(1), signed(FED, rnd), secure=True).status == "ok"

    second_run = trainer.train(
        _envelope(2), signed(FED, 1, admin_run_id="admin-run-2"), secure=True
    )

    assert (second_run.status, second_run.code) == ("refused", "federation_epsilon_exceeded")
    # training got target_epsilon less the evaluation's share (a tenth): 2.0 - 0.2
    assert "it has spent 1.7" in second_run.reason or "it has spent 1.8" in second_run.reason
    assert len(trainer.ledger.entries()) == 3


def test_federation_cap_ignores_other_federations_but_not_unknown_ones(
    make_trainer: MakeTrainer,
) -> None:
    big = AccountantStep(noise_multiplier=1.0, sample_rate=0.1, steps=100)  # epsilon 7.9
    trainer = make_trainer(
        federations=["clinic-fed", "bank-fed"], federation_epsilon={"clinic-fed": 2.5}
    )
    trainer.ledger.record(
        dataset_id=trainer.settings.dataset_id, run_id="old", round=1, step=big,
        accountant="rdp", delta=1e-5, epsilon_after=7.9, num_examples=100,
        federation="bank-fed",
    )  # fmt: skip

    assert trainer.train(_envelope(), signed(FED, 1), secure=True).status == "ok"

    trainer.ledger.record(  # an entry from before ledgers named federations
        dataset_id=trainer.settings.dataset_id, run_id="older", round=1, step=big,
        accountant="rdp", delta=1e-5, epsilon_after=7.9, num_examples=100,
    )  # fmt: skip
    refused = trainer.train(_envelope(), signed(FED, 2), secure=True)
    assert (refused.status, refused.code) == ("refused", "federation_epsilon_exceeded")


# -- node.toml ---------------------------------------------------------------------------


def _write_toml(tmp_path: Path, privacy: str) -> Path:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "key").write_text("x")
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nname = "clinic"\nstate_dir = "state"\n\n'
        '[data]\ntask = "breast_cancer"\npartition = "site-0-of-3"\n\n'
        f"{privacy}\n"
        '[superlink]\naddress = "127.0.0.1:9093"\nroot_certificates = "ca.pem"\n\n'
        '[auth]\nprivate_key = "key"\n'
    )
    return path


def test_node_toml_reads_every_policy_key(tmp_path: Path) -> None:
    path = _write_toml(
        tmp_path,
        '[privacy]\nepsilon_budget = 8.0\nfederations = ["clinic-fed", "bank-fed"]\n'
        'tasks = ["breast_cancer"]\nmax_epsilon_per_federation = 4.0\n'
        "min_noise_multiplier = 0.8\nmax_grad_norm = 1.0\nrequire_secure_aggregation = false\n"
        "[privacy.federation_epsilon]\nclinic-fed = 3.0\n",
    )

    privacy = load_node_settings(path).privacy

    assert privacy.tasks == ("breast_cancer",)
    assert privacy.epsilon_cap("clinic-fed") == 3.0
    assert privacy.epsilon_cap("bank-fed") == 4.0
    assert (privacy.min_noise_multiplier, privacy.max_grad_norm) == (0.8, 1.0)
    assert privacy.require_secure_aggregation is False


def test_node_toml_defaults_keep_the_strict_floor(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, '[privacy]\nepsilon_budget = 8.0\nfederations = ["f"]\n')

    privacy = load_node_settings(path).privacy

    assert privacy.require_secure_aggregation is True
    assert privacy.epsilon_cap("f") is None
    assert (privacy.min_noise_multiplier, privacy.max_grad_norm, privacy.tasks) == (0.0, None, ())


@pytest.mark.parametrize(
    ("privacy", "fragment"),
    [
        ('federations = ["f"]\n[privacy.federation_epsilon]\ng = 1.0\n', "['g']"),
        ('federations = ["f"]\n[privacy.federation_epsilon]\nf = 0\n', "federation_epsilon"),
        ('federations = ["f"]\nmin_noise_multiplier = -1\n', "min_noise_multiplier"),
        ('federations = ["f"]\nmax_grad_norm = 0\n', "max_grad_norm"),
        ('federations = ["f"]\nrequire_secure_aggregation = "no"\n', "require_secure_aggregation"),
    ],
)
def test_node_toml_rejects_bad_policy_values(tmp_path: Path, privacy: str, fragment: str) -> None:
    path = _write_toml(tmp_path, f"[privacy]\nepsilon_budget = 8.0\n{privacy}")

    with pytest.raises(NodeConfigError) as caught:
        load_node_settings(path)

    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)


def test_policy_error_type_carries_the_field() -> None:
    err = PolicyRefusedError("noise_too_low", "why", field="privacy.min_noise_multiplier")
    assert (err.code, err.reason, err.field, str(err)) == (
        "noise_too_low",
        "why",
        "privacy.min_noise_multiplier",
        "why",
    )
