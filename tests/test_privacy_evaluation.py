"""The DP evaluation release: noised confusion counts, charged as an Opacus accountant step."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from lepton_fl.metrics import rates_from_confusion
from lepton_fl.privacy import AccountantStep, PrivacyAccountingError, epsilon_spent
from lepton_fl.privacy.accounting import PRV_EPS_ERROR
from lepton_fl.privacy.evaluation import (
    DEFAULT_EVALUATION_SHARE,
    calibrate_run,
    evaluation_epsilon_share,
    evaluation_step,
    release_confusion,
)

S = AccountantStep
DELTA = 1e-5
pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    # Opacus's PRV takes log(1 - q), which is log(0) at sample rate 1 (harmless there).
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]
CONFUSION = ((40, 5), (7, 30))


def test_release_is_noised_non_negative_and_consistent() -> None:
    released = release_confusion(CONFUSION, noise_multiplier=3.0, rng=np.random.default_rng(1))

    flat = [v for row in released.confusion for v in row]
    assert all(isinstance(v, int) and v >= 0 for v in flat)
    assert released.confusion != CONFUSION  # noised (at sigma 3 a tie has tiny odds)
    assert released.num_examples == sum(flat)  # never the exact split size
    assert (released.accuracy, released.precision, released.recall, released.f1) == (
        rates_from_confusion(released.confusion)
    )
    assert released.roc_auc is None  # not released


def test_release_noise_is_centred_with_the_calibrated_spread() -> None:
    rng = np.random.default_rng(7)
    draws = np.array(
        [
            release_confusion(CONFUSION, noise_multiplier=2.0, rng=rng).confusion
            for _ in range(4000)
        ],
        dtype=np.float64,
    )
    errors = draws - np.asarray(CONFUSION, dtype=np.float64)
    assert np.all(np.abs(errors.mean(axis=0)) < 0.15)
    # rounding adds variance 1/12 to sigma^2 = 4
    assert np.all(np.abs(errors.std(axis=0) - np.sqrt(4 + 1 / 12)) < 0.15)


def test_release_of_counts_noised_to_nothing_reports_zero() -> None:
    released = release_confusion(((0, 0), (0, 0)), noise_multiplier=1e-3)
    assert released.num_examples == 0
    assert released.accuracy == released.f1 == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_evaluation_composes_with_training_as_opacus_computes_it(accountant: Any) -> None:
    training = S(1.2, 0.05, 60)
    sigma_eval = 4.0
    ours = epsilon_spent(
        [training, evaluation_step(sigma_eval)], delta=DELTA, accountant=accountant
    )

    opacus = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(60):
        opacus.step(noise_multiplier=1.2, sample_rate=0.05)
    opacus.step(noise_multiplier=sigma_eval, sample_rate=1.0)  # the Gaussian mechanism
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accountant == "rdp":
            theirs = opacus.get_epsilon(delta=DELTA)
        else:
            theirs = opacus.get_epsilon(
                delta=DELTA, eps_error=PRV_EPS_ERROR, delta_error=DELTA / 1000
            )
    assert ours == pytest.approx(theirs, rel=1e-9)
    training_only = epsilon_spent([training], delta=DELTA, accountant=accountant)
    assert training_only < ours  # the release costs something ...
    assert ours < training_only + epsilon_spent(  # ... and composes tighter than adding up
        [evaluation_step(sigma_eval)], delta=DELTA, accountant=accountant
    )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_run_calibration_leaves_room_for_evaluation(accountant: Any) -> None:
    plan = calibrate_run(
        sample_rate=0.1,
        steps=50,
        target_epsilon=3.0,
        evaluation_epsilon=0.3,
        evaluations=1,
        delta=DELTA,
        accountant=accountant,
    )
    assert plan.evaluation is not None
    assert plan.evaluation_noise_multiplier is not None
    assert plan.evaluation == S(plan.evaluation_noise_multiplier, 1.0, 1)
    training = epsilon_spent([plan.training], delta=DELTA, accountant=accountant)
    both = epsilon_spent([plan.training, plan.evaluation], delta=DELTA, accountant=accountant)
    assert training <= 2.7
    assert both <= 3.0
    assert both > 2.9  # near-minimal evaluation noise: it uses its share
    # a tenth less evaluation noise would overspend the target
    less = evaluation_step(plan.evaluation_noise_multiplier * 0.9)
    assert epsilon_spent([plan.training, less], delta=DELTA, accountant=accountant) > 3.0


def test_run_without_evaluation_gives_training_the_whole_target() -> None:
    plan = calibrate_run(
        sample_rate=0.1,
        steps=50,
        target_epsilon=3.0,
        evaluation_epsilon=0.3,
        evaluations=0,
        delta=DELTA,
        accountant="rdp",
    )
    assert plan.evaluation is None
    assert plan.evaluation_noise_multiplier is None
    assert 2.9 < epsilon_spent([plan.training], delta=DELTA, accountant="rdp") <= 3.0


def test_evaluation_share_default_and_validation() -> None:
    assert evaluation_epsilon_share(3.0, None) == pytest.approx(DEFAULT_EVALUATION_SHARE * 3.0)
    assert evaluation_epsilon_share(3.0, 0.0) == 0.0
    assert evaluation_epsilon_share(3.0, 0.5) == 0.5
    for bad in (3.0, 4.0, -0.1, float("nan")):
        with pytest.raises(PrivacyAccountingError, match="evaluation_epsilon"):
            evaluation_epsilon_share(3.0, bad)


@settings(max_examples=25, deadline=None)
@given(
    low=st.floats(min_value=0.5, max_value=30.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
    steps=st.integers(min_value=0, max_value=40),
)
def test_more_evaluation_noise_never_costs_more_epsilon(
    low: float, factor: float, steps: int
) -> None:
    history = [S(1.1, 0.05, steps)]
    cases: tuple[tuple[Any, float], ...] = (("rdp", 1e-12), ("prv", 2 * PRV_EPS_ERROR))
    for accountant, slack in cases:
        noisier = epsilon_spent(
            [*history, evaluation_step(low * factor)], delta=DELTA, accountant=accountant
        )
        plainer = epsilon_spent(
            [*history, evaluation_step(low)], delta=DELTA, accountant=accountant
        )
        assert noisier <= plainer + slack
