"""Privacy accounting against Opacus's own accountants (no mocks)."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from lepton_fl.privacy import (
    AccountantStep,
    PrivacyAccountingError,
    epsilon_spent,
    opacus_history,
)

S = AccountantStep
# Opacus warns when the best RDP order is at the end of its range (extreme examples).
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
DELTA = 1e-5
REPO = Path(__file__).resolve().parents[1]

# Ranges where one RDP evaluation takes at most ~0.1 s (Opacus's RDP is pure Python).
sigmas = st.floats(min_value=0.8, max_value=5.0)
rates = st.floats(min_value=1e-3, max_value=0.05)
step_counts = st.integers(min_value=1, max_value=2000)
fast = settings(max_examples=25, deadline=None)


def _stepped(accountant: RDPAccountant | PRVAccountant, phases: list[S]) -> float:
    for phase in phases:
        for _ in range(phase.steps):
            accountant.step(noise_multiplier=phase.noise_multiplier, sample_rate=phase.sample_rate)
    return float(accountant.get_epsilon(delta=DELTA))


@pytest.mark.parametrize(
    "phases",
    [
        [S(1.1, 0.01, 300)],
        [S(0.8, 0.02, 100), S(1.5, 0.02, 250)],
        [S(2.0, 0.005, 40), S(2.0, 0.005, 60), S(0.9, 0.05, 10)],
    ],
)
def test_accounting_rdp_matches_opacus_stepped(phases: list[S]) -> None:
    expected = _stepped(RDPAccountant(), phases)
    assert epsilon_spent(phases, delta=DELTA, accountant="rdp") == expected


def test_accounting_prv_matches_opacus_stepped() -> None:
    # Opacus merges consecutive identical steps; so do we, with the same result.
    phases = [S(1.0, 0.02, 30), S(1.0, 0.02, 20), S(1.3, 0.05, 10)]
    expected = _stepped(PRVAccountant(), phases)
    assert epsilon_spent(phases, delta=DELTA, accountant="prv") == expected


def test_accounting_prv_is_tighter_than_rdp() -> None:
    history = [S(1.1, 0.01, 1000)]
    prv = epsilon_spent(history, delta=DELTA, accountant="prv")
    rdp = epsilon_spent(history, delta=DELTA, accountant="rdp")
    assert 0 < prv < rdp
    assert prv == pytest.approx(1.5255, abs=1e-3)
    assert rdp == pytest.approx(1.7118, abs=1e-3)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_accounting_empty_history_is_zero(accountant: Any) -> None:
    assert epsilon_spent([], delta=DELTA, accountant=accountant) == 0.0
    assert epsilon_spent([S(1.0, 0.1, 0)], delta=DELTA, accountant=accountant) == 0.0


def test_accounting_history_merges_like_opacus_step() -> None:
    history = [S(1.0, 0.1, 3), S(1.0, 0.1, 0), S(1.0, 0.1, 2), S(2.0, 0.1, 1), S(1.0, 0.1, 4)]
    assert opacus_history(history) == [(1.0, 0.1, 5), (2.0, 0.1, 1), (1.0, 0.1, 4)]


def test_accounting_step_normalises_numbers() -> None:
    step = S(2, 1, 7)  # ints are accepted and stored as float/float/int
    assert (step.noise_multiplier, step.sample_rate, step.steps) == (2.0, 1.0, 7)
    assert isinstance(step.noise_multiplier, float)


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (lambda: S(0.0, 0.1, 1), "invalid_noise_multiplier", "greater than 0"),
        (lambda: S(-1.0, 0.1, 1), "invalid_noise_multiplier", "greater than 0"),
        (lambda: S(math.nan, 0.1, 1), "invalid_noise_multiplier", "nan"),
        (lambda: S(math.inf, 0.1, 1), "invalid_noise_multiplier", "inf"),
        (lambda: S("1.0", 0.1, 1), "invalid_noise_multiplier", "type str"),  # type: ignore[arg-type]
        (lambda: S(1.0, 0.0, 1), "invalid_sample_rate", "(0, 1]"),
        (lambda: S(1.0, 1.5, 1), "invalid_sample_rate", "(0, 1]"),
        (lambda: S(1.0, math.nan, 1), "invalid_sample_rate", "(0, 1]"),
        (lambda: S(1.0, 0.1, -1), "invalid_steps", ">= 0"),
        (lambda: S(1.0, 0.1, 1.5), "invalid_steps", "whole number"),  # type: ignore[arg-type]
        (lambda: S(1.0, 0.1, True), "invalid_steps", "type bool"),
        (
            lambda: epsilon_spent([], delta=0.0, accountant="rdp"),
            "invalid_delta",
            "between 0 and 1",
        ),
        (
            lambda: epsilon_spent([], delta=1.0, accountant="rdp"),
            "invalid_delta",
            "between 0 and 1",
        ),
        (lambda: epsilon_spent([], delta=math.nan, accountant="rdp"), "invalid_delta", "nan"),
        (
            lambda: epsilon_spent([], delta="1e-5", accountant="rdp"),  # type: ignore[arg-type]
            "invalid_delta",
            "type str",
        ),
        (
            lambda: epsilon_spent([], delta=DELTA, accountant="gdp"),  # type: ignore[arg-type]
            "unknown_accountant",
            "'rdp' or 'prv'",
        ),
        (
            lambda: epsilon_spent([(1.0, 0.1, 1)], delta=DELTA, accountant="rdp"),  # type: ignore[list-item]
            "invalid_history",
            "history[0] must be an AccountantStep",
        ),
        (
            lambda: epsilon_spent(S(1.0, 0.1, 1), delta=DELTA, accountant="rdp"),  # type: ignore[arg-type]
            "invalid_history",
            "sequence of AccountantStep",
        ),
    ],
)
def test_accounting_rejects_bad_inputs(build: Any, code: str, fragment: str) -> None:
    with pytest.raises(PrivacyAccountingError, match=".") as caught:
        build()
    assert caught.value.code == code
    message = str(caught.value)
    assert fragment in message
    assert message.endswith(".")


def test_accounting_prv_refuses_an_oversized_grid() -> None:
    # Opacus would try to allocate ~1e9 points here and the process would be killed.
    with pytest.raises(PrivacyAccountingError, match="'rdp' accountant") as caught:
        epsilon_spent([S(0.1, 0.5, 1000)], delta=DELTA, accountant="prv")
    assert caught.value.code == "prv_domain_too_large"


def test_accounting_prv_failure_is_wrapped() -> None:
    with pytest.raises(PrivacyAccountingError, match="Cannot compute epsilon") as caught:
        epsilon_spent([S(1.0, 0.01, 10)], delta=0.999, accountant="prv")
    assert caught.value.code == "prv_failed"


def test_accounting_error_survives_pickling() -> None:
    error = PrivacyAccountingError("Something to fix.", code="invalid_delta")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), str(copy), copy.code) == (
        PrivacyAccountingError,
        "Something to fix.",
        "invalid_delta",
    )


def test_accounting_import_does_not_load_opacus() -> None:
    code = (
        "import sys, lepton_fl.privacy, client_node.ledger; "
        "assert 'opacus' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@fast
@given(sigma=sigmas, rate=rates, steps=step_counts, more=step_counts)
def test_accounting_epsilon_grows_with_steps(
    sigma: float, rate: float, steps: int, more: int
) -> None:
    fewer = epsilon_spent([S(sigma, rate, steps)], delta=DELTA, accountant="rdp")
    longer = epsilon_spent([S(sigma, rate, steps + more)], delta=DELTA, accountant="rdp")
    assert longer >= fewer


@fast
@given(sigma=sigmas, extra=st.floats(min_value=0.0, max_value=5.0), rate=rates, steps=step_counts)
def test_accounting_more_noise_never_costs_more(
    sigma: float, extra: float, rate: float, steps: int
) -> None:
    noisy = epsilon_spent([S(sigma + extra, rate, steps)], delta=DELTA, accountant="rdp")
    quiet = epsilon_spent([S(sigma, rate, steps)], delta=DELTA, accountant="rdp")
    assert noisy <= quiet


@fast
@given(
    history=st.lists(st.builds(S, sigmas, rates, step_counts), max_size=2),
    step=st.builds(S, sigmas, rates, st.integers(min_value=0, max_value=2000)),
)
def test_accounting_appending_never_decreases_epsilon(history: list[S], step: S) -> None:
    before = epsilon_spent(history, delta=DELTA, accountant="rdp")
    after = epsilon_spent([*history, step], delta=DELTA, accountant="rdp")
    assert after >= before


def test_prv_epsilon_is_remembered_per_history_and_delta_but_failures_are_not() -> None:
    """PRV composition takes seconds; ledger views and metrics scrapes ask again and again."""
    from lepton_fl.privacy import accounting

    cached = accounting._prv_epsilon_of
    history = [S(1.3, 0.02, 300), S(2.1, 0.02, 100)]
    first = epsilon_spent(history, delta=DELTA, accountant="prv")
    before = cached.cache_info()
    again = epsilon_spent(list(history), delta=DELTA, accountant="prv")
    assert again == first
    assert cached.cache_info().hits == before.hits + 1
    # another delta or one more step is another question: computed, and larger where it must be
    assert epsilon_spent(history, delta=DELTA / 10, accountant="prv") > first
    assert epsilon_spent([*history, S(2.1, 0.02, 1)], delta=DELTA, accountant="prv") > first
    assert cached.cache_info().misses == before.misses + 2
    # a refused history is refused every time, never remembered as a number
    for _ in range(2):
        with pytest.raises(PrivacyAccountingError):
            epsilon_spent([S(0.1, 0.5, 1000)], delta=DELTA, accountant="prv")
