"""Noise calibration with Opacus as the oracle (no mocks)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants.utils import get_noise_multiplier

from lepton_fl.privacy import (
    AccountantStep,
    PrivacyAccountingError,
    calibrate_noise_multiplier,
    epsilon_spent,
)
from lepton_fl.privacy.calibration import MIN_NOISE_MULTIPLIER

S = AccountantStep
# Opacus warns when the best RDP order is at the end of its range (extreme examples).
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
DELTA = 1e-5
# Ranges keep sigma where one Opacus RDP evaluation (pure Python) takes well under 0.1 s.
fast = settings(max_examples=25, deadline=None)


def _epsilon(history: list[S], sigma: float, rate: float, steps: int, accountant: Any) -> float:
    return epsilon_spent([*history, S(sigma, rate, steps)], delta=DELTA, accountant=accountant)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("history", [[], [S(1.5, 0.02, 100)]])
def test_calibration_meets_target_and_is_near_minimal(accountant: Any, history: list[S]) -> None:
    tolerance = 0.01
    sigma = calibrate_noise_multiplier(
        sample_rate=0.02,
        steps=100,
        target_epsilon=2.0,
        delta=DELTA,
        accountant=accountant,
        history=history,
        tolerance=tolerance,
    )
    assert _epsilon(history, sigma, 0.02, 100, accountant) <= 2.0
    assert _epsilon(history, sigma * (1 - 2 * tolerance), 0.02, 100, accountant) > 2.0


def test_calibration_agrees_with_opacus_get_noise_multiplier() -> None:
    ours = calibrate_noise_multiplier(
        sample_rate=0.02, steps=800, target_epsilon=2.0, delta=DELTA, accountant="rdp"
    )
    theirs = get_noise_multiplier(
        target_epsilon=2.0, target_delta=DELTA, sample_rate=0.02, steps=800, accountant="rdp"
    )
    # Opacus's answer also meets the target, so ours (near-minimal) is at most ~1% above it.
    assert theirs * 0.95 <= ours <= theirs / (1 - 0.01)


def test_calibration_refuses_when_history_has_spent_the_target() -> None:
    history = [S(0.8, 0.05, 2000)]
    spent = epsilon_spent(history, delta=DELTA, accountant="rdp")
    with pytest.raises(PrivacyAccountingError, match="already spent epsilon") as caught:
        calibrate_noise_multiplier(
            sample_rate=0.01,
            steps=10,
            target_epsilon=spent,
            delta=DELTA,
            accountant="rdp",
            history=history,
        )
    assert caught.value.code == "budget_exhausted"
    assert f"{spent:.4g}" in str(caught.value)


def test_calibration_fails_below_the_rdp_floor() -> None:
    with pytest.raises(PrivacyAccountingError, match=r"at least 0\.10") as caught:
        calibrate_noise_multiplier(
            sample_rate=0.01, steps=10, target_epsilon=0.05, delta=DELTA, accountant="rdp"
        )
    assert caught.value.code == "calibration_failed"
    assert "0.05" in str(caught.value)


def test_calibration_never_goes_below_the_minimum_noise() -> None:
    sigma = calibrate_noise_multiplier(
        sample_rate=0.001, steps=1, target_epsilon=1e6, delta=DELTA, accountant="rdp"
    )
    assert sigma == MIN_NOISE_MULTIPLIER


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"steps": 0}, "invalid_steps"),
        ({"steps": -3}, "invalid_steps"),
        ({"sample_rate": 0.0}, "invalid_sample_rate"),
        ({"target_epsilon": 0.0}, "invalid_target_epsilon"),
        ({"target_epsilon": float("inf")}, "invalid_target_epsilon"),
        ({"tolerance": 0.0}, "invalid_tolerance"),
        ({"tolerance": 0.5}, "invalid_tolerance"),
        ({"delta": 2.0}, "invalid_delta"),
        ({"accountant": "gdp"}, "unknown_accountant"),
    ],
)
def test_calibration_rejects_bad_inputs(overrides: dict[str, Any], code: str) -> None:
    arguments: dict[str, Any] = {
        "sample_rate": 0.01,
        "steps": 100,
        "target_epsilon": 3.0,
        "delta": DELTA,
        "accountant": "rdp",
    } | overrides
    with pytest.raises(PrivacyAccountingError, match=r"\.$") as caught:
        calibrate_noise_multiplier(**arguments)
    assert caught.value.code == code


@fast
@given(
    rate=st.floats(min_value=1e-3, max_value=0.05),
    steps=st.integers(min_value=1, max_value=2000),
    target=st.floats(min_value=0.5, max_value=8.0),
)
def test_calibration_result_meets_target_and_is_near_minimal(
    rate: float, steps: int, target: float
) -> None:
    tolerance = 0.01
    sigma = calibrate_noise_multiplier(
        sample_rate=rate,
        steps=steps,
        target_epsilon=target,
        delta=DELTA,
        accountant="rdp",
        tolerance=tolerance,
    )
    assert _epsilon([], sigma, rate, steps, "rdp") <= target
    if sigma > MIN_NOISE_MULTIPLIER:
        assert _epsilon([], sigma * (1 - 2 * tolerance), rate, steps, "rdp") > target


@settings(max_examples=12, deadline=None)  # two calibrations per example: ~0.8 s each
@given(
    past=st.builds(
        S,
        st.floats(min_value=0.8, max_value=4.0),
        st.floats(min_value=1e-3, max_value=0.05),
        st.integers(min_value=1, max_value=500),
    ),
    rate=st.floats(min_value=5e-3, max_value=0.05),
    steps=st.integers(min_value=10, max_value=1000),
    target=st.floats(min_value=1.0, max_value=5.0),
)
def test_calibration_with_history_adds_at_least_as_much_noise(
    past: S, rate: float, steps: int, target: float
) -> None:
    assume(epsilon_spent([past], delta=DELTA, accountant="rdp") < 0.8 * target)
    kwargs: dict[str, Any] = {
        "sample_rate": rate,
        "steps": steps,
        "target_epsilon": target,
        "delta": DELTA,
        "accountant": "rdp",
    }
    fresh = calibrate_noise_multiplier(**kwargs)
    continuing = calibrate_noise_multiplier(**kwargs, history=[past])
    assert continuing >= fresh
    assert _epsilon([past], continuing, rate, steps, "rdp") <= target
