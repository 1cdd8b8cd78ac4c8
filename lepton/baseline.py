"""Local-only baselines: what each hospital would get training alone, at the same privacy.

Used by the demo for comparison. Each baseline trains the federation's model with the same
DP-SGD settings (batch size, clipping, epochs per round, rounds, target epsilon) on one
hospital's training rows and evaluates on the same held-out split the node uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from client_node.trainer.dp_sgd import DPTrainer, resolve_device
from client_node.trainer.evaluation import evaluate
from lepton_fl.config import FederationSpec
from lepton_fl.datasets import load_partition
from lepton_fl.models import ModelSpec, build_model
from lepton_fl.privacy import AccountantStep, calibrate_noise_multiplier, epsilon_spent


@dataclass(frozen=True)
class BaselineResult:
    """A local-only model's held-out metrics and the epsilon its training spent."""

    accuracy: float
    roc_auc: float | None
    epsilon: float

    def metrics(self) -> dict[str, float | None]:
        """The summary's `local_only` object."""
        return {"accuracy": self.accuracy, "roc_auc": self.roc_auc, "epsilon": self.epsilon}


def local_only_baseline(fed: FederationSpec, site: str) -> BaselineResult:
    """Train and evaluate one hospital's local-only DP model."""
    split = load_partition(fed.task, site)
    device = resolve_device("cpu")
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the nodes share the host
    model = build_model(
        ModelSpec(name=fed.model.name, hidden=tuple(fed.model.hidden), dropout=fed.model.dropout),
        num_features=split.num_features,
        num_classes=split.num_classes,
        seed=fed.seed,
    )
    trainer = DPTrainer(
        model=model,
        x=split.x_train,
        y=split.y_train,
        batch_size=min(fed.training.batch_size, len(split.y_train)),
        learning_rate=fed.training.learning_rate,
        max_grad_norm=fed.privacy.max_grad_norm,
        device=device,
        seed=fed.seed,
    )
    steps = trainer.steps_per_epoch() * fed.training.local_epochs * fed.rounds
    sigma = calibrate_noise_multiplier(
        sample_rate=trainer.sample_rate,
        steps=steps,
        target_epsilon=fed.privacy.target_epsilon,
        delta=fed.privacy.delta,
        accountant=fed.privacy.accountant,
    )
    history = [
        trainer.train(epochs=fed.training.local_epochs, noise_multiplier=sigma)
        for _ in range(fed.rounds)
    ]
    spent = epsilon_spent(
        [
            AccountantStep(noise_multiplier=sigma, sample_rate=r.sample_rate, steps=r.steps)
            for r in history
        ],
        delta=fed.privacy.delta,
        accountant=fed.privacy.accountant,
    )
    result = evaluate(trainer.model, split.x_test, split.y_test, device=device)
    return BaselineResult(accuracy=result.accuracy, roc_auc=result.roc_auc, epsilon=spent)


def local_only_baselines(fed: FederationSpec, sites: Sequence[str]) -> dict[str, BaselineResult]:
    """Baselines for every site, one after the other."""
    return {site: local_only_baseline(fed, site) for site in sites}
