"""Signed run authorizations: the crypto (sign, verify, domain separation from releases) and
the trainer's refusals (train, evaluate, SecAgg+ advertise) before any training or ledger
entry."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import RecordDict
from signing_support import (
    TEST_KEY,
    TEST_PUBLIC_PEM,
    authorization,
    pin_key,
    signed,
    write_node_key,
)
from trainer_support import trainer_factory

from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.secure import SecureAggregation
from lepton_fl.config import FederationSpec, Member, PrivacySpec, RunSpec, TrainingSpec
from lepton_fl.crypto.checkpoint import Checkpoint, sign_checkpoint
from lepton_fl.crypto.release import (
    ReleaseError,
    public_key_pem,
    sign_manifest,
    verify_signed_manifest,
)
from lepton_fl.crypto.run_authorization import (
    AUTHORIZATION_FORMAT,
    RunAuthorizationError,
    authorize_run,
    verify_run_authorization,
)
from lepton_fl.model_init import initial_weights
from lepton_fl.secagg import SecAggServer
from lepton_fl.secagg.fedavg import session_config, vector_length
from lepton_fl.wire import (
    Envelope,
    RoundInstruction,
    instruction_from_records,
    instruction_to_records,
    train_reply_from_records,
)
from lepton_fl.wire.secagg import is_secagg, secagg_request_to_records

FED = FederationSpec(
    name="clinic-fed",
    task="breast_cancer",
    rounds=2,
    privacy=PrivacySpec(target_epsilon=2.0, delta=1e-5),
    training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.3),
)
NODE = 9
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


# --------------------------------------------------------------------------- crypto


def test_authorization_round_trip_names_run_spec_and_members() -> None:
    signed_text = authorization(FED, node_ids=(9, 10, 11), admin_run_id="run-a")

    verified = verify_run_authorization(
        signed_text, TEST_PUBLIC_PEM, federation_digest=FED.digest(), node_id=10
    )

    assert verified.format == AUTHORIZATION_FORMAT
    assert verified.admin_run_id == "run-a"
    assert verified.federation_digest == FED.digest()
    assert [m.node_id for m in verified.members] == [9, 10, 11]


def test_authorize_run_signs_what_the_run_spec_says() -> None:
    members = tuple(Member(name=f"site{i}", node_id=100 + i) for i in range(3))
    run = RunSpec(federation=FED, members=members, journal_path="j", admin_run_id="run-b")

    authorized = authorize_run(run, TEST_KEY)

    assert authorized.authorization is not None
    verified = verify_run_authorization(
        authorized.authorization, TEST_PUBLIC_PEM, federation_digest=FED.digest(), node_id=101
    )
    assert verified.members == members
    with pytest.raises(ValueError, match="admin_run_id"):
        authorize_run(run.model_copy(update={"admin_run_id": None}), TEST_KEY)


def _code(signed_text: str | None, *, node_id: int = NODE, digest: str | None = None) -> str:
    with pytest.raises(RunAuthorizationError) as caught:
        verify_run_authorization(
            signed_text, TEST_PUBLIC_PEM, federation_digest=digest or FED.digest(), node_id=node_id
        )
    return caught.value.code


def _altered(signed_text: str, **changes: object) -> str:
    document = json.loads(signed_text)
    document["authorization"].update(changes)
    return json.dumps(document)


def test_verify_refuses_each_failure_with_its_code() -> None:
    good = authorization(FED)
    other_spec = FED.model_copy(update={"rounds": 5})

    assert _code(None) == "run_unsigned"
    assert _code("") == "run_unsigned"
    assert _code("{not json") == "run_malformed_authorization"
    assert _code(authorization(FED, key=OTHER_KEY)) == "run_foreign_key"
    assert _code(_altered(good, members=[{"name": "evil", "node_id": 9}])) == "run_bad_signature"
    assert _code(good, digest=other_spec.digest()) == "run_spec_mismatch"
    assert _code(good, node_id=10) == "run_not_member"


def test_a_release_signature_never_verifies_as_a_run_authorization() -> None:
    good = json.loads(authorization(FED))
    # The coordinator's release signer signs whatever manifest it is given: even one that
    # holds exactly an authorization's fields (plus a model digest) ...
    manifest = {**good["authorization"], "model_digest": "sha256:" + "0" * 64}
    release = sign_manifest(manifest, TEST_KEY)
    forged = {"authorization": release["manifest"], "signature": release["signature"]}
    # ... does not become an authorization: the signed bytes differ by the domain prefix.
    assert _code(json.dumps(forged)) in {"run_bad_signature", "run_malformed_authorization"}
    without_digest = dict(manifest)
    del without_digest["model_digest"]
    forged["authorization"] = without_digest
    assert _code(json.dumps(forged)) == "run_bad_signature"


def test_a_run_authorization_never_verifies_as_a_release() -> None:
    good = json.loads(authorization(FED))
    as_release = {"manifest": good["authorization"], "signature": good["signature"]}

    with pytest.raises(ReleaseError) as caught:
        verify_signed_manifest(as_release, TEST_PUBLIC_PEM)

    assert caught.value.code == "release-bad-signature"


def test_the_signature_covers_the_domain_prefix() -> None:
    good = json.loads(authorization(FED))
    raw = base64.b64decode(good["signature"]["value"])
    public = TEST_KEY.public_key()
    from lepton_fl.crypto.release import canonical_json

    public.verify(
        raw, AUTHORIZATION_FORMAT.encode() + b"\x00" + canonical_json(good["authorization"])
    )


def test_a_bad_pinned_key_is_refused_with_its_code() -> None:
    with pytest.raises(RunAuthorizationError) as caught:
        verify_run_authorization(
            authorization(FED), "not a key", federation_digest=FED.digest(), node_id=NODE
        )
    assert caught.value.code == "run_bad_pinned_key"


def test_the_wire_carries_the_authorization_unchanged() -> None:
    instruction = signed(FED, 1)

    decoded = instruction_from_records(instruction_to_records(instruction))

    assert decoded.authorization == instruction.authorization
    unsigned = instruction_from_records(instruction_to_records(RoundInstruction(FED, 1)))
    assert unsigned.authorization is None


# --------------------------------------------------------------------------- the trainer


def _settings(home: Path, *, pinned: bool = True, secure: bool = False) -> NodeSettings:
    (home / "ca.pem").write_text("unused here")
    raw: dict[str, object] = {
        "node": {"name": "clinic", "state_dir": str(home)},
        "data": {"task": "breast_cancer", "partition": "site-0-of-3"},
        "privacy": {
            "epsilon_budget": 10.0,
            "federations": ["clinic-fed"],
            "require_secure_aggregation": secure,
        },
        "superlink": {"address": "127.0.0.1:1", "root_certificates": str(home / "ca.pem")},
        "auth": {"private_key": write_node_key(home, NODE)},
    }
    if pinned:
        raw["coordinator"] = pin_key(home)
    return NodeSettings.model_validate(raw)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Iterator[object]:
    with trainer_factory() as factory:

        def make(*, pinned: bool = True, secure: bool = False) -> NodeTrainer:
            return factory.trainer(_settings(tmp_path, pinned=pinned, secure=secure))

        yield make


def _envelope(run_id: int = 1, kind: str = "train") -> Envelope:
    return Envelope(kind=kind, run_id=run_id, message_id="m", node_id=NODE)  # type: ignore[arg-type]


_ALTERED_SPEC = dataclasses.replace(
    signed(FED, 1), federation=FED.model_copy(update={"privacy": PrivacySpec(target_epsilon=50.0)})
)
BAD_INSTRUCTIONS = {
    "run_unsigned": RoundInstruction(FED, 1),
    "run_spec_mismatch": _ALTERED_SPEC,
    "run_foreign_key": signed(FED, 1, key=OTHER_KEY),
    "run_not_member": signed(FED, 1, node_ids=(10, 11, 12)),
    "run_bad_signature": dataclasses.replace(
        signed(FED, 1), authorization=_altered(authorization(FED), admin_run_id="admin-run-2")
    ),
}


@pytest.mark.parametrize("code", sorted(BAD_INSTRUCTIONS))
def test_trainer_refuses_before_training_or_ledger(make_trainer, code: str) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()
    instruction = BAD_INSTRUCTIONS[code]

    train = trainer.train(_envelope(), instruction)
    evaluate = trainer.evaluate(_envelope(kind="evaluate"), instruction)

    assert (train.status, train.code) == ("refused", code)
    assert (evaluate.status, evaluate.code) == ("refused", code)
    assert evaluate.evaluation is None
    assert trainer.ledger.entries() == []
    assert trainer._engines == {}  # no model was even built


def test_trainer_refuses_a_replay_under_another_flower_run(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()
    assert trainer.train(_envelope(run_id=1), signed(FED, 1)).status == "ok"

    replay = trainer.train(_envelope(run_id=2), signed(FED, 1))
    replay_eval = trainer.evaluate(_envelope(run_id=2, kind="evaluate"), signed(FED, 2))

    assert (replay.status, replay.code) == ("refused", "run_replayed")
    assert (replay_eval.status, replay_eval.code) == ("refused", "run_replayed")
    assert [(e.run_id, e.round) for e in trainer.ledger.entries()] == [("1", 1)]


def test_the_replay_binding_survives_a_restart(make_trainer) -> None:  # type: ignore[no-untyped-def]
    first = make_trainer()
    # authorized (so bound to Flower run 1), then refused by the privacy gate: round 1 is not
    # the evaluation the spec schedules; nothing is charged
    bound = first.evaluate(_envelope(run_id=1, kind="evaluate"), signed(FED, 1))
    assert (bound.status, bound.code) == ("refused", "evaluation_not_scheduled")
    first.ledger.close()
    restarted = make_trainer()

    replay = restarted.train(_envelope(run_id=2), signed(FED, 1))

    assert (replay.status, replay.code) == ("refused", "run_replayed")
    assert restarted.ledger.entries() == []
    assert restarted.train(_envelope(run_id=1), signed(FED, 1)).status == "ok"


def test_a_node_without_a_pinned_key_refuses_every_run(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(pinned=False)

    reply = trainer.train(_envelope(), signed(FED, 1))

    assert (reply.status, reply.code) == ("refused", "run_no_pinned_key")
    assert "[coordinator] public_key" in reply.reason
    assert trainer.ledger.entries() == []


def _advertise_content(instruction: RoundInstruction, *, run_id: int = 1) -> RecordDict:
    """A SecAgg+ advertise-keys request for this node, with the instruction header."""
    weights = initial_weights(FED)
    server = SecAggServer(
        run_id=str(run_id),
        session=1,
        config=session_config(FED, first_round=1),
        participants=[NODE, 10, 11],
        vector_length=vector_length([np.shape(w) for w in weights]),
        graph_seed=bytes(32),
    )
    content = secagg_request_to_records(server.advertise_keys_requests()[NODE])
    header = instruction_to_records(dataclasses.replace(instruction, weights=[]))
    for name, record in header.items():
        content[name] = record
    return content


@pytest.mark.parametrize("code", sorted(BAD_INSTRUCTIONS))
def test_secagg_advertise_refuses_before_any_key_exchange(make_trainer, code: str) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(secure=True)
    secure = SecureAggregation(trainer)

    answer = secure.handle(_envelope(kind="secagg"), _advertise_content(BAD_INSTRUCTIONS[code]))

    assert not is_secagg(answer)  # no keys advertised
    reply = train_reply_from_records(answer)
    assert (reply.status, reply.code) == ("refused", code)
    assert secure._sessions == {}
    assert trainer.ledger.entries() == []


def test_secagg_advertise_with_a_valid_authorization_joins(make_trainer) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(secure=True)
    secure = SecureAggregation(trainer)
    instruction = signed(FED, 1, node_ids=(NODE, 10, 11))

    answer = secure.handle(_envelope(kind="secagg"), _advertise_content(instruction))

    assert is_secagg(answer)
    assert len(secure._sessions) == 1
    replay = secure.handle(
        _envelope(run_id=2, kind="secagg"), _advertise_content(instruction, run_id=2)
    )
    assert train_reply_from_records(replay).code == "run_replayed"


def test_public_key_pem_of_the_test_key_is_pinned() -> None:
    assert public_key_pem(TEST_KEY) == TEST_PUBLIC_PEM


# --------------------------------------------------------------------------- audit checkpoints


def _checkpoint(seq: int, head: str, *, key: Ed25519PrivateKey = TEST_KEY) -> dict[str, Any]:
    return sign_checkpoint(Checkpoint(seq=seq, head_hash=head * 64, at=f"t{seq}"), key)


def test_the_node_keeps_each_runs_audit_checkpoint(make_trainer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer()
    first = signed(FED, 1, audit_checkpoint=_checkpoint(10, "a"))
    later = signed(FED, 1, admin_run_id="admin-run-2", audit_checkpoint=_checkpoint(12, "b"))

    assert trainer.train(_envelope(run_id=1), first).status == "ok"
    assert trainer.train(_envelope(run_id=2), later).status == "ok"
    assert trainer.train(_envelope(run_id=2), later).status == "ok"  # redelivered: kept once

    lines = (tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()
    assert [json.loads(line)["checkpoint"]["seq"] for line in lines] == [10, 12]
    trainer.ledger.close()
    assert [c.seq for c in make_trainer().checkpoints.kept()] == [10, 12]  # after a restart


@pytest.mark.parametrize(
    ("checkpoint", "code"),
    [
        (_checkpoint(10, "f"), "audit_log_forked"),  # row 10 signed again with another head
        (_checkpoint(7, "c"), "audit_log_cut"),  # back to an earlier row
        (_checkpoint(13, "d", key=OTHER_KEY), "audit_checkpoint_invalid"),
    ],
)
def test_a_contradicting_checkpoint_stops_the_node_working_for_the_coordinator(  # type: ignore[no-untyped-def]
    make_trainer, checkpoint: dict[str, Any], code: str
) -> None:
    """The operator rewrote or cut its audit log (or forged a checkpoint) between runs:
    the node refuses the next run before any training or charge."""
    trainer = make_trainer()
    assert (
        trainer.train(
            _envelope(run_id=1), signed(FED, 1, audit_checkpoint=_checkpoint(10, "a"))
        ).status
        == "ok"
    )
    charged = trainer.ledger.entries()

    reply = trainer.train(
        _envelope(run_id=2), signed(FED, 1, admin_run_id="admin-run-2", audit_checkpoint=checkpoint)
    )

    assert (reply.status, reply.code) == ("refused", code)
    assert "audit-checkpoints.jsonl" in reply.reason or code == "audit_checkpoint_invalid"
    assert trainer.ledger.entries() == charged
    assert [c.seq for c in trainer.checkpoints.kept()] == [10]


def test_a_damaged_checkpoint_file_is_refused_naming_the_line(make_trainer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "audit-checkpoints.jsonl").write_text('{"checkpoint": {"seq": "x"}}\n')
    trainer = make_trainer()

    reply = trainer.train(_envelope(), signed(FED, 1, audit_checkpoint=_checkpoint(3, "a")))

    assert (reply.status, reply.code) == ("refused", "audit_checkpoints_damaged")
    assert "Line 1" in reply.reason
    assert trainer.ledger.entries() == []
