"""The budget rule: refuse a round before it would exceed a dataset's budget."""

from __future__ import annotations

from typing import Any

import pytest

from lepton_fl.privacy import (
    AccountantStep,
    BudgetDecision,
    PrivacyAccountingError,
    check_round,
    epsilon_spent,
)

S = AccountantStep
DELTA = 1e-5
HISTORY = [S(1.0, 0.01, 1000)]  # about 2.10 with RDP
PLANNED = S(1.0, 0.01, 500)  # takes it to about 2.50


def test_budget_allows_a_round_that_fits() -> None:
    decision = check_round(HISTORY, PLANNED, budget=3.0, delta=DELTA, accountant="rdp")
    assert decision == BudgetDecision(
        allowed=True,
        epsilon_before=epsilon_spent(HISTORY, delta=DELTA, accountant="rdp"),
        epsilon_after=epsilon_spent([*HISTORY, PLANNED], delta=DELTA, accountant="rdp"),
        budget=3.0,
        reason="",
    )
    assert decision.epsilon_before < decision.epsilon_after <= 3.0


def test_budget_refuses_a_round_that_would_exceed() -> None:
    decision = check_round(HISTORY, PLANNED, budget=2.3, delta=DELTA, accountant="rdp")
    assert not decision.allowed
    assert decision.epsilon_before <= 2.3 < decision.epsilon_after
    assert decision.reason == (
        f"Round refused: it would raise epsilon from {decision.epsilon_before:.2f} to "
        f"{decision.epsilon_after:.2f}, above this dataset's budget of 2.30 (delta=1e-05, rdp). "
        "Raise the site budget, train with more noise or fewer steps, or stop the run."
    )


def test_budget_refuses_when_already_over() -> None:
    decision = check_round(HISTORY, PLANNED, budget=2.0, delta=DELTA, accountant="rdp")
    assert not decision.allowed
    assert decision.reason.startswith(
        f"Round refused: this dataset has already spent epsilon {decision.epsilon_before:.2f}, "
        "above its budget of 2.00 (delta=1e-05, rdp)."
    )


def test_budget_allows_a_round_that_lands_exactly_on_the_budget() -> None:
    after = epsilon_spent([*HISTORY, PLANNED], delta=DELTA, accountant="rdp")
    assert check_round(HISTORY, PLANNED, budget=after, delta=DELTA, accountant="rdp").allowed


def test_budget_reason_separates_close_numbers() -> None:
    after = epsilon_spent([*HISTORY, PLANNED], delta=DELTA, accountant="rdp")
    budget = after - 0.0004
    decision = check_round(HISTORY, PLANNED, budget=budget, delta=DELTA, accountant="rdp")
    assert not decision.allowed
    assert f"to {after:.4f}, above this dataset's budget of {budget:.4f}" in decision.reason


def test_budget_first_round_with_prv() -> None:
    decision = check_round([], S(1.1, 0.01, 1000), budget=1.6, delta=DELTA, accountant="prv")
    assert decision.allowed
    assert decision.epsilon_before == 0.0
    assert decision.epsilon_after == pytest.approx(1.5255, abs=1e-3)
    refused = check_round([], S(1.1, 0.01, 1000), budget=1.5, delta=DELTA, accountant="prv")
    assert not refused.allowed
    assert "from 0.00 to 1.53" in refused.reason
    assert "(delta=1e-05, prv)" in refused.reason


@pytest.mark.parametrize(
    ("budget", "planned", "code"),
    [
        (0.0, PLANNED, "invalid_budget"),
        (-1.0, PLANNED, "invalid_budget"),
        (float("inf"), PLANNED, "invalid_budget"),
        (True, PLANNED, "invalid_budget"),
        (3.0, (1.0, 0.01, 500), "invalid_history"),
    ],
)
def test_budget_rejects_bad_inputs(budget: Any, planned: Any, code: str) -> None:
    with pytest.raises(PrivacyAccountingError, match=r"\.$") as caught:
        check_round(HISTORY, planned, budget=budget, delta=DELTA, accountant="rdp")
    assert caught.value.code == code


def test_run_pre_check_counts_the_whole_plan_training_and_evaluation() -> None:
    from lepton_fl.privacy.budget import planned_run_epsilon, run_fits_budget

    assert planned_run_epsilon(3.0) == 3.0  # target_epsilon covers the evaluation too
    assert run_fits_budget(4.0, target_epsilon=3.0, budget=7.0).allowed
    refused = run_fits_budget(4.5, target_epsilon=3.0, budget=7.0)
    assert not refused.allowed
    assert "plans epsilon 3 (its training and its scheduled evaluation)" in refused.reason
    assert "spent 4.5 of its budget 7 (remaining 2.5)" in refused.reason
