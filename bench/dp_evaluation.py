"""What the DP evaluation release costs and how much it moves the metrics, at the demo's settings.

In process, with the node's real classes (`NodeTrainer`, its privacy gate, a real SQLite
ledger per hospital, signed runs): the hospital sector's federation (4 hospitals, heart
disease, `lepton demo`'s spec) trains `--rounds` plain FedAvg rounds, then every node
answers the scheduled evaluation. It reports per node the epsilon spent on training and what
the evaluation release added (from the node's ledger), the release's noise multiplier, and
the accuracy of the released counts against the exact counts (which never leave a real node;
here the bench reads them from the node's own model). `--draws` more releases of the same
exact counts give the spread of the movement, per node and pooled over the federation.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.evaluation import evaluate
from lepton.sectors import SECTORS
from lepton_fl.config import FederationSpec, Member, PrivacySpec
from lepton_fl.crypto.release import public_key_pem
from lepton_fl.crypto.run_authorization import RunAuthorization, sign_run_authorization
from lepton_fl.datasets import load_partition
from lepton_fl.metrics import rates_from_confusion
from lepton_fl.models import set_weights
from lepton_fl.privacy import epsilon_spent
from lepton_fl.privacy.evaluation import evaluation_epsilon_share, release_confusion
from lepton_fl.wire import Envelope, RoundInstruction

KEY = Ed25519PrivateKey.generate()


def _node_key(node_id: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(2_000_003 + node_id, ec.SECP384R1())


def _member(name: str, node_id: int) -> Member:
    public = (
        _node_key(node_id)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return Member(name=name, node_id=node_id, public_key=public.decode("ascii"))


def _trainer(root: Path, name: str, fed: FederationSpec) -> NodeTrainer:
    state = root / name
    state.mkdir(parents=True)
    (state / "ca.pem").write_text("unused in process")
    (state / "key").write_text("unused in process")
    (state / "coordinator.pem").write_text(public_key_pem(KEY))
    settings = NodeSettings.model_validate(
        {
            "node": {"name": name, "state_dir": str(state)},
            "data": {"task": fed.task, "partition": name},
            "privacy": {
                "epsilon_budget": 8.0,
                "federations": [fed.name],
                "require_secure_aggregation": False,  # in process: plain FedAvg
            },
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(state / "ca.pem")},
            "auth": {"private_key": str(state / "key")},
            "coordinator": {"public_key": str(state / "coordinator.pem")},
        }
    )
    split = load_partition(fed.task, name)
    return NodeTrainer(
        settings=settings,
        split=split,
        ledger=Ledger(settings.ledger_path),
        device=torch.device("cpu"),
    )


def run(
    rounds: int, target_epsilon: float, draws: int, evaluation_epsilon: float | None = None
) -> dict[str, Any]:
    sector = SECTORS["hospital"]
    fed = sector.federation_spec(rounds=rounds, target_epsilon=target_epsilon)
    if evaluation_epsilon is not None:
        privacy = fed.privacy.model_copy(update={"evaluation_epsilon": evaluation_epsilon})
        fed = fed.model_copy(update={"privacy": PrivacySpec.model_validate(privacy.model_dump())})
    sites = list(sector.sites)
    members = tuple(_member(name, k + 1) for k, name in enumerate(sites))
    authorization = sign_run_authorization(
        RunAuthorization(
            admin_run_id="bench-run",
            federation=fed.name,
            federation_digest=fed.digest(),
            members=members,
            issued_at="2026-01-01T00:00:00+00:00",
        ),
        KEY,
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: _trainer(Path(tmp), name, fed) for name in sites}
        envelopes = {
            m.name: Envelope(kind="train", run_id=1, message_id="m", node_id=m.node_id)
            for m in members
        }
        weights: list[np.ndarray] = []
        for rnd in range(1, rounds + 1):
            instruction = RoundInstruction(fed, rnd, weights, authorization=authorization)
            replies = {n: t.train(envelopes[n], instruction) for n, t in trainers.items()}
            bad = {n: r.reason for n, r in replies.items() if r.status != "ok"}
            if bad:
                raise SystemExit(f"round {rnd} refused: {bad}")
            total = sum(r.num_examples for r in replies.values())
            weights = [
                np.sum([r.weights[i] * (r.num_examples / total) for r in replies.values()], axis=0)
                for i in range(len(next(iter(replies.values())).weights))
            ]
        final = RoundInstruction(fed, rounds, weights, authorization=authorization)
        nodes: dict[str, Any] = {}
        exact_all, released_all, draws_all = [], [], []
        for name, trainer in trainers.items():
            reply = trainer.evaluate(envelopes[name], final)
            if reply.status != "ok" or reply.evaluation is None or reply.charge is None:
                raise SystemExit(f"{name}: evaluation refused: {reply.reason}")
            engine, _ = trainer._engine(fed)
            set_weights(engine.model, weights)
            test = trainer.split.test
            exact = evaluate(engine.model, test.inputs, test.labels, device=torch.device("cpu"))
            entries = trainer.ledger.entries()
            delta, accountant = fed.privacy.delta, fed.privacy.accountant
            training = epsilon_spent(
                [e.step for e in entries if e.kind == "train"], delta=delta, accountant=accountant
            )
            sigma = reply.charge.noise_multiplier
            sims = [
                release_confusion(exact.confusion, noise_multiplier=sigma, rng=rng).confusion
                for _ in range(draws)
            ]
            moved = [abs(_accuracy(c) - exact.accuracy) for c in sims]
            nodes[name] = {
                "held_out": exact.num_examples,
                "epsilon_training": training,
                "epsilon_total": reply.epsilon,
                "epsilon_evaluation": (reply.epsilon or 0.0) - training,
                "evaluation_noise_multiplier": sigma,
                "accuracy_exact": exact.accuracy,
                "accuracy_released": reply.evaluation.accuracy,
                "accuracy_moved_mean_abs": float(np.mean(moved)),
                "accuracy_moved_p95": float(np.quantile(moved, 0.95)),
            }
            exact_all.append(np.asarray(exact.confusion))
            released_all.append(np.asarray(reply.evaluation.confusion))
            draws_all.append(np.asarray(sims))
            trainer.ledger.close()
    pooled_exact = _accuracy(np.sum(exact_all, axis=0))
    pooled_moves = np.abs(
        np.array([_accuracy(m) for m in np.sum(draws_all, axis=0)]) - pooled_exact
    )
    return {
        "federation": fed.name,
        "rounds": rounds,
        "target_epsilon": target_epsilon,
        "evaluation_epsilon": evaluation_epsilon_share(
            target_epsilon, fed.privacy.evaluation_epsilon
        ),
        "accountant": fed.privacy.accountant,
        "nodes": nodes,
        "pooled_accuracy_exact": pooled_exact,
        "pooled_accuracy_released": _accuracy(np.sum(released_all, axis=0)),
        "pooled_accuracy_moved_mean_abs": float(np.mean(pooled_moves)),
        "pooled_accuracy_moved_p95": float(np.quantile(pooled_moves, 0.95)),
        "draws": draws,
    }


def _accuracy(confusion: Any) -> float:
    matrix = tuple(tuple(int(v) for v in row) for row in np.asarray(confusion))
    return rates_from_confusion(matrix)[0] if np.asarray(confusion).sum() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument(
        "--evaluation-epsilon", type=float, default=None, help="default: the spec's default share"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(json.dumps(run(args.rounds, args.target_epsilon, args.draws, args.evaluation_epsilon)))


if __name__ == "__main__":
    main()
