"""Every sector's model learns above its majority class under DP-SGD, in process.

Each test trains the sector's registered model (``lepton.sectors.SECTORS``: the demo's model and
tuned hyperparameters) with the node's real DP engine (``DPTrainer``: Opacus per-sample
clipping, Gaussian noise, Poisson sampling) on every site's training rows pooled, at the noise
multiplier the node would calibrate for the planned epochs at eps 3 (the demo's target),
delta 1e-5, RDP; then scores the model on the pooled held-out rows, exactly (no DP release, no
Flower). The margin each test asserts over the majority rate is below the smallest margin
measured over seeds 0-9 with the same procedure (see ``MARGINS``), so a model that stopped
learning (stuck at the majority class, ROC-AUC near 0.5) fails while seed noise does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from client_node.trainer.dp_sgd import DPTrainer
from client_node.trainer.evaluation import evaluate
from lepton.sectors import SECTORS
from lepton_fl.datasets import DatasetError, load_local
from lepton_fl.datasets.examples import Examples
from lepton_fl.models import build_model, model_spec
from lepton_fl.privacy import calibrate_noise_multiplier

CPU = torch.device("cpu")
EPSILON = 3.0
SEED = 0


@dataclass(frozen=True)
class Learned:
    """What one in-process DP training reached on the pooled held-out rows."""

    accuracy: float
    roc_auc: float
    majority: float
    noise_multiplier: float


def _pool(parts: list[Examples]) -> Examples:
    inputs = tuple(
        np.concatenate([p.inputs[k] for p in parts]) for k in range(len(parts[0].inputs))
    )
    return Examples(inputs=inputs, labels=np.concatenate([p.labels for p in parts]))


def dp_train(key: str, *, seed: int, epochs: int, epsilon: float = EPSILON) -> Learned:
    """Train sector ``key``'s model with DP-SGD on all its sites' training rows, ``epochs``
    epochs at the noise calibrated for them, and score it on all held-out rows."""
    sector = SECTORS[key]
    try:
        splits = [load_local(sector.task, site, seed=seed) for site in sector.sites]
    except DatasetError as err:  # pragma: no cover - the sectors extra is not installed
        if os.environ.get("CI"):  # make test installs it: CI must run these
            pytest.fail(f"CI must run the sector learning tests: {err}", pytrace=False)
        pytest.skip(str(err))
    train, test = _pool([s.train for s in splits]), _pool([s.test for s in splits])
    model = build_model(
        model_spec(sector.model),
        input_shape=splits[0].input_shape,
        num_classes=splits[0].num_classes,
        seed=seed,
    )
    trainer = DPTrainer(
        model=model,
        inputs=train.inputs,
        labels=train.labels,
        batch_size=sector.training.batch_size,
        learning_rate=sector.training.learning_rate,
        max_grad_norm=sector.max_grad_norm,
        device=CPU,
        seed=seed,
        reproducible_noise=True,
    )
    sigma = calibrate_noise_multiplier(
        sample_rate=trainer.sample_rate,
        steps=trainer.steps_per_epoch() * epochs,
        target_epsilon=epsilon,
        delta=1e-5,
        accountant="rdp",
    )
    trainer.train(epochs=epochs, noise_multiplier=sigma)
    result = evaluate(trainer.model, test.inputs, test.labels, device=CPU)
    assert result.roc_auc is not None
    majority = float(np.bincount(test.labels).max() / len(test.labels))
    return Learned(result.accuracy, result.roc_auc, majority, sigma)


# sector -> (epochs, epsilon, accuracy points above the majority rate, minimum ROC-AUC), asserted
# at SEED; each below the minimum that dp_train gave over seeds 0-9
# (``python tests/test_sector_learning.py [sector ...]`` prints them).
MARGINS: dict[str, tuple[int, float, float, float]] = {
    "hospital": (10, EPSILON, 0.15, 0.80),  # measured: min +0.226, ROC-AUC min 0.867
    "bank": (5, EPSILON, 0.03, 0.75),  # measured: min +0.056, ROC-AUC min 0.811
    "factory": (8, EPSILON, 0.08, 0.78),  # measured: min +0.115, ROC-AUC min 0.826
    # text: at eps 3 the linear head is not reliably above the majority class (min -0.029 in
    # an earlier sweep); at eps 8 it is, narrowly, and its ranking clearly is.
    "text": (20, 8.0, 0.0, 0.65),  # measured: min +0.004, ROC-AUC min 0.685
}


def _check(key: str) -> None:
    torch.set_num_threads(1)
    epochs, epsilon, points, auc = MARGINS[key]
    learned = dp_train(key, seed=SEED, epochs=epochs, epsilon=epsilon)
    assert learned.accuracy >= learned.majority + points, learned
    assert learned.roc_auc >= auc, learned


def test_hospital_model_learns_under_dp() -> None:
    _check("hospital")


def test_bank_model_learns_under_dp() -> None:
    _check("bank")


@pytest.mark.slow
def test_factory_model_learns_under_dp() -> None:
    _check("factory")


@pytest.mark.slow
def test_text_model_learns_under_dp() -> None:
    _check("text")


if __name__ == "__main__":  # the margins' measurement: every sector over seeds 0-9
    import sys

    torch.set_num_threads(1)
    for name in sys.argv[1:] or list(MARGINS):
        epochs, epsilon = MARGINS[name][:2]
        rows = [dp_train(name, seed=s, epochs=epochs, epsilon=epsilon) for s in range(10)]
        gaps = [r.accuracy - r.majority for r in rows]
        aucs = [r.roc_auc for r in rows]
        print(
            f"{name}: epochs {epochs}, eps {epsilon:g}, sigma {rows[0].noise_multiplier:.2f}; "
            f"accuracy - majority min {min(gaps):+.3f} mean {np.mean(gaps):+.3f}; "
            f"ROC-AUC min {min(aucs):.3f} mean {np.mean(aucs):.3f}; "
            f"seed {SEED}: {gaps[SEED]:+.3f} / {aucs[SEED]:.3f}",
            flush=True,
        )
