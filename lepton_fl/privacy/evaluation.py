"""DP evaluation: a node releases its held-out evaluation only as noised confusion counts.

The mechanism is the Gaussian mechanism on the confusion matrix's count vector. Adding or
removing one held-out record changes exactly one cell by one, so the vector's L2
sensitivity is 1, and noise ``N(0, sigma^2)`` on every cell is one Opacus accountant step
with ``noise_multiplier = sigma``, ``sample_rate = 1.0`` (no sampling: every record is
used) and ``steps = 1`` per release. Charging it as such an :class:`AccountantStep`
composes it with the node's DP-SGD history by the same accountant (RDP or PRV) that
accounts training, on the same ledger. (The held-out and training rows are disjoint, so
parallel composition would allow less; sequential composition is the conservative bound
and the one the ledger can check.)

Everything derived from the noised counts is post-processing and costs nothing more:
counts are rounded and clamped at zero, and accuracy, precision, recall and F1 are computed
from them by :func:`lepton_fl.metrics.rates_from_confusion`, so the released figures are
consistent with each other. The number of examples released is the noised counts' sum,
never the exact split size. Loss and ROC-AUC have no such release: they stay at the node.

The budget: a federation's ``target_epsilon`` covers training **and** its scheduled
evaluations. :func:`calibrate_run` gives training ``target_epsilon - evaluation_epsilon``
and then the least evaluation noise that keeps training + evaluation within
``target_epsilon``, so ``evaluation_epsilon`` is what evaluation may add to the run's
epsilon under the federation's accountant (its marginal cost), and the run as a whole
still spends at most ``target_epsilon``. No torch here; Opacus is imported lazily by
:mod:`lepton_fl.privacy.accounting`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_fl.metrics import ClassificationMetrics, Confusion, rates_from_confusion
from lepton_fl.privacy.accounting import (
    AccountantName,
    AccountantStep,
    PrivacyAccountingError,
    check_accountant,
    check_delta,
    check_finite,
    check_positive,
)
from lepton_fl.privacy.calibration import calibrate_noise_multiplier

__all__ = [
    "DEFAULT_EVALUATION_SHARE",
    "EVALUATION_SAMPLE_RATE",
    "RunCalibration",
    "calibrate_run",
    "evaluation_epsilon_share",
    "evaluation_step",
    "release_confusion",
]

#: The share of ``target_epsilon`` evaluation may use when a spec does not say.
DEFAULT_EVALUATION_SHARE = 0.1
#: A release uses every held-out record: no sampling, sample rate 1.
EVALUATION_SAMPLE_RATE = 1.0


def evaluation_epsilon_share(target_epsilon: float, evaluation_epsilon: float | None) -> float:
    """The epsilon a run's scheduled evaluations may add: ``evaluation_epsilon``, or
    :data:`DEFAULT_EVALUATION_SHARE` of ``target_epsilon`` when it is ``None``.

    ``0`` means the run schedules no evaluation. Raises :class:`PrivacyAccountingError`
    (``invalid_evaluation_epsilon``) unless ``0 <= share < target_epsilon``.
    """
    target = check_positive(target_epsilon, name="target_epsilon", code="invalid_target_epsilon")
    if evaluation_epsilon is None:
        return DEFAULT_EVALUATION_SHARE * target
    share = check_finite(
        evaluation_epsilon, name="evaluation_epsilon", code="invalid_evaluation_epsilon"
    )
    if not 0.0 <= share < target:
        raise PrivacyAccountingError(
            f"evaluation_epsilon must be at least 0 and below target_epsilon = {target:g} (it "
            f"is the part of the run's epsilon reserved for evaluation), got {share:g}. Lower "
            "it, raise target_epsilon, or set it to 0 to schedule no evaluation.",
            code="invalid_evaluation_epsilon",
        )
    return share


def evaluation_step(noise_multiplier: float, *, releases: int = 1) -> AccountantStep:
    """The accountant entry of ``releases`` Gaussian releases of the counts at
    ``noise_multiplier`` (sample rate 1: every held-out record takes part)."""
    return AccountantStep(noise_multiplier, EVALUATION_SAMPLE_RATE, releases)


@dataclass(frozen=True)
class RunCalibration:
    """A node's noise for one run: DP-SGD's and, when the run evaluates, the release's.

    ``training`` is the whole run's training (every round's steps), ``evaluation`` every
    scheduled release; ``evaluation_noise_multiplier`` is ``None`` (and ``evaluation``
    ``None``) when the run schedules no evaluation.
    """

    noise_multiplier: float
    evaluation_noise_multiplier: float | None
    training: AccountantStep
    evaluation: AccountantStep | None


def calibrate_run(
    *,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    evaluation_epsilon: float,
    evaluations: int,
    delta: float,
    accountant: AccountantName,
) -> RunCalibration:
    """Calibrate a run's training noise and evaluation noise against one target.

    ``steps`` are the run's DP-SGD steps (all rounds) at ``sample_rate``;
    ``evaluations`` the number of scheduled releases (0: none, and training gets the whole
    ``target_epsilon``). Training is calibrated to ``target_epsilon -
    evaluation_epsilon``; the evaluation noise is then the least that keeps
    ``epsilon(training + evaluations) <= target_epsilon`` (both by
    :func:`calibrate_noise_multiplier`, the accountant as oracle). The result depends on
    the spec and the sampling rate only, so a restarted node computes the same noise.

    Raises:
        PrivacyAccountingError: invalid inputs, or no noise fits (``calibration_failed``).
    """
    name = check_accountant(accountant)
    delta_value = check_delta(delta)
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 0:
        raise PrivacyAccountingError(
            f"evaluations must be a whole number >= 0, got {evaluations!r}.",
            code="invalid_steps",
        )
    target = check_positive(target_epsilon, name="target_epsilon", code="invalid_target_epsilon")
    share = evaluation_epsilon_share(target, evaluation_epsilon) if evaluations else 0.0
    sigma = calibrate_noise_multiplier(
        sample_rate=sample_rate,
        steps=steps,
        target_epsilon=target - share,
        delta=delta_value,
        accountant=name,
    )
    training = AccountantStep(sigma, sample_rate, steps)
    if not evaluations or share == 0.0:
        return RunCalibration(sigma, None, training, None)
    sigma_eval = calibrate_noise_multiplier(
        sample_rate=EVALUATION_SAMPLE_RATE,
        steps=evaluations,
        target_epsilon=target,
        delta=delta_value,
        accountant=name,
        history=[training],
    )
    return RunCalibration(
        sigma, sigma_eval, training, evaluation_step(sigma_eval, releases=evaluations)
    )


def release_confusion(
    confusion: Confusion,
    *,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> ClassificationMetrics:
    """The DP release of a confusion matrix: Gaussian noise on every count, post-processed.

    Each cell gets independent ``N(0, noise_multiplier^2)`` noise (the L2 sensitivity of the
    count vector is 1), then is rounded and clamped at 0. ``num_examples`` is the released
    counts' sum; accuracy, precision, recall and F1 follow from the released counts
    (all ``0.0`` when every released count is 0). ``roc_auc`` is ``None``: it is not
    released. ``rng`` defaults to a generator seeded from the operating system; pass one
    only in tests.
    """
    sigma = check_positive(
        noise_multiplier, name="noise_multiplier", code="invalid_noise_multiplier"
    )
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 2:
        raise ValueError(f"the confusion matrix must be square, at least 2 x 2, got {counts.shape}")
    generator = rng if rng is not None else np.random.default_rng()
    noised = counts + generator.normal(0.0, sigma, size=counts.shape)
    released = np.maximum(np.rint(noised), 0.0).astype(np.int64)
    matrix: Confusion = tuple(tuple(int(v) for v in row) for row in released)
    total = int(released.sum())
    if total == 0:
        accuracy = precision = recall = f1 = 0.0
    else:
        accuracy, precision, recall, f1 = rates_from_confusion(matrix)
    return ClassificationMetrics(
        num_examples=total,
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        roc_auc=None,
        confusion=matrix,
    )
