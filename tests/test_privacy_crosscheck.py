"""Opacus against Google's dp-accounting: the auditor's independent epsilon recomputation.

Measured with Opacus 1.6 and dp-accounting 0.6.0 at delta=1e-5 on the grid below
(q in {0.01, 0.1, 0.3}, sigma in {0.6, 1, 2}, 1 to 500 steps, and mixed histories):

* RDP: dp-accounting is never below Opacus (by more than rounding). They agree within
  0.06% while epsilon is below 8, within 0.5% up to epsilon 10, and within 0.9% up to
  20; above that dp-accounting's conservative fractional-order series takes over
  (+1.6% at epsilon 22, +25% at 63, +81% at 187).
* PLD (pessimistic, grid 1e-3) against PRV: Opacus's PRV epsilon is the upper end of
  its 0.01 error interval, so PRV - PLD is 0.0088-0.0145 (0.0104 at epsilon 5, 0.012 at
  50, 0.0145 at 177): relative to epsilon, 0.1% or less above epsilon 10.
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_fl.privacy import crosscheck
from lepton_fl.privacy.accounting import AccountantStep, PrivacyAccountingError, epsilon_spent
from lepton_fl.privacy.crosscheck import (
    CrossCheck,
    cross_check,
    epsilon_dp_accounting,
)

DELTA = 1e-5

SINGLE = [
    [AccountantStep(sigma, q, steps)]
    for q in (0.01, 0.1, 0.3)
    for sigma in (0.6, 1.0, 2.0)
    for steps in (1, 10, 100, 500)
]
MIXED = [
    # a node whose noise was re-calibrated mid-run
    [AccountantStep(1.0, 0.01, 50)] * 20 + [AccountantStep(1.3, 0.01, 50)] * 20,
    # rounds over differently sized local datasets, equal mechanisms not adjacent
    [
        AccountantStep(1.0, 0.01, 100),
        AccountantStep(2.0, 0.3, 50),
        AccountantStep(0.6, 0.1, 10),
        AccountantStep(1.0, 0.01, 100),
    ],
    # training rounds and an evaluation release (sample rate 1: the plain Gaussian)
    [AccountantStep(2.0, 0.1, 200), AccountantStep(5.0, 1.0, 1), AccountantStep(2.0, 0.1, 0)],
]
HISTORIES = SINGLE + MIXED
#: For the (slower) PRV and PLD: no 10-step histories, and none with epsilon above 50.
MODERATE = [
    h
    for h in HISTORIES
    if h[0].steps != 10
    and (h[0].noise_multiplier, h[0].sample_rate, h[0].steps)
    not in {(0.6, 0.3, 500), (1.0, 0.3, 500), (0.6, 0.3, 100), (0.6, 0.1, 500)}
]


def _ids(history: list[AccountantStep]) -> str:
    return "+".join(f"s{h.noise_multiplier}q{h.sample_rate}n{h.steps}" for h in history[:4])


def test_rdp_orders_are_opacus_defaults() -> None:
    from opacus.accountants import RDPAccountant

    assert list(crosscheck.RDP_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lepton_fl.privacy.crosscheck; "
        "print(any(m.split('.')[0] in ('dp_accounting', 'opacus', 'torch') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("history", HISTORIES, ids=_ids)
def test_rdp_agrees_with_opacus(history: list[AccountantStep]) -> None:
    opacus = epsilon_spent(history, delta=DELTA, accountant="rdp")
    google = epsilon_dp_accounting(history, delta=DELTA, method="rdp")
    # dp-accounting's fractional orders are computed conservatively: never below Opacus.
    assert google >= opacus * (1 - 1e-9)
    gap = (google - opacus) / opacus
    if opacus <= 10:
        assert gap <= 0.01  # measured at most 0.5%
    elif opacus <= 20:
        assert gap <= 0.02  # measured at most 0.8%


@pytest.mark.parametrize("history", MODERATE, ids=_ids)
def test_pld_agrees_with_opacus_prv(history: list[AccountantStep]) -> None:
    prv = epsilon_spent(history, delta=DELTA, accountant="prv")
    pld = epsilon_dp_accounting(history, delta=DELTA, method="pld")
    # Opacus reports the PRV estimate plus its error bound of 0.01: measured 0.0088-0.0145
    # above the PLD, the excess growing slowly with epsilon.
    assert 0.0075 <= prv - pld <= 0.0125 + 2e-5 * prv


def test_sample_rate_one_is_the_gaussian_mechanism() -> None:
    history = [AccountantStep(1.0, 1.0, 10)]
    # Ten Gaussian releases at sigma 1 are one at sigma 1/sqrt(10); its RDP at order a is
    # a * 10 / 2, the same closed form in both libraries.
    assert epsilon_dp_accounting(history, delta=DELTA, method="rdp") == pytest.approx(
        epsilon_spent(history, delta=DELTA, accountant="rdp"), rel=1e-12
    )


def test_empty_and_zero_step_histories_are_zero() -> None:
    for method in ("rdp", "pld"):
        assert epsilon_dp_accounting([], delta=DELTA, method=method) == 0.0
        assert (
            epsilon_dp_accounting([AccountantStep(1.0, 0.1, 0)], delta=DELTA, method=method) == 0.0
        )
    check = cross_check([], delta=DELTA, accountant="prv", reported=0.0, tolerance=0.02)
    assert check == CrossCheck(0.0, 0.0, 0.0, ok=True, problem=None)


def test_pld_runtime_on_a_long_history() -> None:
    # 100 rounds of 50 steps; a run's noise and sample rate stay the same, so the history
    # is one mechanism composed 5000 times (measured 0.05-0.2 s per call at q 0.01-0.3).
    for sigma, q in ((1.0, 0.01), (3.0, 0.3), (0.8, 0.1)):
        history = [AccountantStep(sigma, q, 50)] * 100
        start = time.perf_counter()
        epsilon_dp_accounting(history, delta=DELTA, method="pld")
        assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_cross_check_flags_an_understated_epsilon(accountant: str) -> None:
    history = [AccountantStep(1.0, 0.01, 50)] * 10
    truth = epsilon_spent(history, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]

    low = cross_check(
        history, delta=DELTA, accountant=accountant, reported=0.9 * truth, tolerance=0.02
    )
    assert not low.ok
    assert low.problem is not None
    assert f"Opacus {accountant.upper()} gives" in low.problem
    assert low.opacus_epsilon == truth
    assert low.reported == pytest.approx(0.9 * truth)

    for reported in (truth, truth * 1.5, 1e6):
        check = cross_check(
            history, delta=DELTA, accountant=accountant, reported=reported, tolerance=0.02
        )
        assert check.ok, check.problem
        assert check.problem is None

    # Within the tolerance: 1% low is accepted at 2%, flagged at 0.5%.
    assert cross_check(
        history, delta=DELTA, accountant=accountant, reported=0.99 * truth, tolerance=0.02
    ).ok
    assert not cross_check(
        history, delta=DELTA, accountant=accountant, reported=0.99 * truth, tolerance=0.005
    ).ok


def test_cross_check_names_dp_accounting_when_it_alone_disagrees() -> None:
    # Little noise, a high sample rate: epsilon about 63, where dp-accounting's RDP is
    # about 25% above Opacus's (its fractional-order series is conservative).
    history = [AccountantStep(0.6, 0.3, 100)]
    truth = epsilon_spent(history, delta=DELTA, accountant="rdp")
    check = cross_check(history, delta=DELTA, accountant="rdp", reported=truth, tolerance=0.02)
    assert not check.ok
    assert check.problem is not None
    assert "dp-accounting RDP gives" in check.problem
    assert "Opacus" not in check.problem
    assert check.dp_accounting_epsilon > 1.2 * check.opacus_epsilon


def test_absolute_floor_near_zero() -> None:
    # Nearly no privacy loss: Opacus's PRV epsilon is its error bound, 0.00999.
    history = [AccountantStep(50.0, 0.001, 1)]
    truth = epsilon_spent(history, delta=DELTA, accountant="prv")
    assert truth < 0.011
    # With no relative tolerance, 0.0005 low passes on the absolute floor (0.001); 0.002 fails.
    assert cross_check(
        history, delta=DELTA, accountant="prv", reported=truth - 5e-4, tolerance=0
    ).ok
    assert not cross_check(
        history, delta=DELTA, accountant="prv", reported=truth - 2e-3, tolerance=0
    ).ok


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (
            lambda: epsilon_dp_accounting([AccountantStep(1.0, 0.1, 5)], delta=0, method="rdp"),
            "invalid_delta",
        ),
        (
            lambda: epsilon_dp_accounting([AccountantStep(1.0, 0.1, 5)], delta=1.0, method="pld"),
            "invalid_delta",
        ),
        (
            lambda: epsilon_dp_accounting(
                [AccountantStep(1.0, 0.1, 5)],
                delta=1e-5,
                method="prv",  # type: ignore[arg-type]
            ),
            "unknown_accountant",
        ),
        (
            lambda: epsilon_dp_accounting([AccountantStep(-1.0, 0.1, 5)], delta=1e-5, method="rdp"),
            "invalid_noise_multiplier",
        ),
        (
            lambda: epsilon_dp_accounting([AccountantStep(0.0, 0.1, 5)], delta=1e-5, method="pld"),
            "invalid_noise_multiplier",
        ),
        (
            lambda: epsilon_dp_accounting([AccountantStep(1.0, 1.5, 5)], delta=1e-5, method="rdp"),
            "invalid_sample_rate",
        ),
        (
            lambda: epsilon_dp_accounting([AccountantStep(1.0, 0.0, 5)], delta=1e-5, method="rdp"),
            "invalid_sample_rate",
        ),
        (
            lambda: epsilon_dp_accounting(
                [(1.0, 0.1, 5)],  # type: ignore[list-item]
                delta=1e-5,
                method="rdp",
            ),
            "invalid_history",
        ),
        (
            lambda: cross_check([], delta=0.0, accountant="rdp", reported=1.0, tolerance=0.02),
            "invalid_delta",
        ),
        (
            lambda: cross_check([], delta=1e-5, accountant="pld", reported=1.0, tolerance=0.02),
            "unknown_accountant",
        ),
        (
            lambda: cross_check([], delta=1e-5, accountant="rdp", reported=-1.0, tolerance=0.02),
            "invalid_epsilon",
        ),
        (
            lambda: cross_check(
                [], delta=1e-5, accountant="rdp", reported=math.nan, tolerance=0.02
            ),
            "invalid_epsilon",
        ),
        (
            lambda: cross_check([], delta=1e-5, accountant="rdp", reported=1.0, tolerance=1.5),
            "invalid_tolerance",
        ),
        (
            lambda: cross_check([], delta=1e-5, accountant="rdp", reported=1.0, tolerance=-0.1),
            "invalid_tolerance",
        ),
    ],
)
def test_bad_input_raises(call: object, code: str) -> None:
    with pytest.raises(PrivacyAccountingError) as info:
        call()  # type: ignore[operator]
    assert info.value.code == code


def test_dp_accounting_failure_is_a_privacy_accounting_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dp_accounting import rdp

    def boom(self: object, target_delta: float) -> float:
        raise ValueError("no convergence")

    monkeypatch.setattr(rdp.RdpAccountant, "get_epsilon", boom)
    with pytest.raises(PrivacyAccountingError, match="dp-accounting's RDP accountant") as info:
        epsilon_dp_accounting([AccountantStep(1.0, 0.1, 5)], delta=DELTA, method="rdp")
    assert info.value.code == "accountant_failed"


@settings(max_examples=10, deadline=None)
@given(
    sigma=st.sampled_from([0.6, 0.8, 1.0, 1.5, 2.0, 3.0]),
    q=st.sampled_from([0.01, 0.05, 0.1, 0.3]),
    steps=st.integers(min_value=1, max_value=400),
    extra=st.integers(min_value=1, max_value=400),
)
def test_rdp_epsilon_grows_with_steps_and_falls_with_noise(
    sigma: float, q: float, steps: int, extra: int
) -> None:
    def eps(s: float, n: int) -> float:
        return epsilon_dp_accounting([AccountantStep(s, q, n)], delta=DELTA, method="rdp")

    assert eps(sigma, steps + extra) > eps(sigma, steps)
    assert eps(sigma * 1.25, steps) < eps(sigma, steps)


@pytest.mark.parametrize(("sigma", "q"), [(0.6, 0.3), (1.0, 0.1), (2.0, 0.01)])
def test_pld_epsilon_grows_with_steps_and_falls_with_noise(sigma: float, q: float) -> None:
    by_steps = [
        epsilon_dp_accounting([AccountantStep(sigma, q, n)], delta=DELTA, method="pld")
        for n in (1, 10, 100, 300)
    ]
    assert by_steps == sorted(by_steps)
    assert len(set(by_steps)) == len(by_steps)
    by_noise = [
        epsilon_dp_accounting([AccountantStep(s, q, 50)], delta=DELTA, method="pld")
        for s in (sigma, sigma * 1.5, sigma * 2, sigma * 3)
    ]
    assert by_noise == sorted(by_noise, reverse=True)
    assert len(set(by_noise)) == len(by_noise)
