"""The budget rule: refuse a round that would take a dataset past its epsilon budget.

A node checks a planned round against its dataset's lifetime history *before* it
trains, never after: the round is allowed only if the epsilon of history + the planned
round stays within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lepton_fl.privacy.accounting import (
    AccountantName,
    AccountantStep,
    PrivacyAccountingError,
    check_accountant,
    check_delta,
    check_positive,
    epsilon_spent,
)


@dataclass(frozen=True)
class BudgetDecision:
    """Whether a planned round fits a dataset's budget, with the numbers behind it."""

    allowed: bool
    epsilon_before: float  # epsilon of the history
    epsilon_after: float  # epsilon of the history + the planned round
    budget: float
    reason: str  # "" when allowed; otherwise a full sentence with the numbers


def check_round(
    history: Sequence[AccountantStep],
    planned: AccountantStep,
    *,
    budget: float,
    delta: float,
    accountant: AccountantName,
) -> BudgetDecision:
    """Decide whether ``planned`` may run on a dataset that has already spent ``history``.

    Allowed when ``epsilon_spent([*history, planned]) <= budget``; otherwise the
    decision's ``reason`` says, with the numbers, why the round is refused.

    Raises:
        PrivacyAccountingError: invalid inputs, or the accountant could not compute
            epsilon (treat that as a refusal too).
    """
    name = check_accountant(accountant)
    delta_value = check_delta(delta)
    limit = check_positive(budget, name="budget", code="invalid_budget")
    if not isinstance(planned, AccountantStep):
        raise PrivacyAccountingError(
            f"planned must be an AccountantStep, got {planned!r}.", code="invalid_history"
        )
    before = epsilon_spent(history, delta=delta_value, accountant=name)
    after = epsilon_spent([*history, planned], delta=delta_value, accountant=name)
    if after <= limit:
        return BudgetDecision(True, before, after, limit, "")
    where = f"(delta={delta_value:g}, {name})"
    if before > limit:
        spent, cap = _pair(before, limit)
        reason = (
            f"Round refused: this dataset has already spent epsilon {spent}, above its "
            f"budget of {cap} {where}. Raise the site budget or stop the run."
        )
    else:
        after_text, cap = _pair(after, limit)
        before_text = _format(before, _decimals(after, limit))
        reason = (
            f"Round refused: it would raise epsilon from {before_text} to {after_text}, above "
            f"this dataset's budget of {cap} {where}. Raise the site budget, train with more "
            "noise or fewer steps, or stop the run."
        )
    return BudgetDecision(False, before, after, limit, reason)


def _decimals(value: float, limit: float) -> int:
    """The fewest decimals (at least 2) at which ``value`` and ``limit`` print apart."""
    for decimals in range(2, 10):
        if _format(value, decimals) != _format(limit, decimals):
            return decimals
    return 10


def _format(value: float, decimals: int) -> str:
    return "infinity" if math.isinf(value) else f"{value:.{decimals}f}"


def _pair(value: float, limit: float) -> tuple[str, str]:
    decimals = _decimals(value, limit)
    return _format(value, decimals), _format(limit, decimals)


def planned_run_epsilon(target_epsilon: float) -> float:
    """The epsilon one run plans at each node: its ``target_epsilon``, which covers its
    training rounds **and** its scheduled evaluation release, composed by the federation's
    accountant (``lepton_fl.privacy.evaluation.calibrate_run`` calibrates both to it)."""
    return check_positive(target_epsilon, name="target_epsilon", code="invalid_budget")


def run_fits_budget(spent: float, *, target_epsilon: float, budget: float) -> BudgetDecision:
    """The admin service's pre-check of a whole run for one node, before it is submitted.

    The run's plan is :func:`planned_run_epsilon` (training + scheduled evaluation), and
    basic composition bounds what it adds to ``spent``, the node's history: allowed when
    ``spent + planned <= budget``. The node itself later checks each round and the
    evaluation exactly (:func:`check_round`, under its own accountant as well).
    """
    planned = planned_run_epsilon(target_epsilon)
    limit = check_positive(budget, name="budget", code="invalid_budget")
    after = spent + planned
    if after <= limit + 1e-12:
        return BudgetDecision(True, spent, after, limit, "")
    return BudgetDecision(
        False,
        spent,
        after,
        limit,
        f"this run plans epsilon {planned:g} (its training and its scheduled evaluation), "
        f"the node has spent {spent:.4g} of its budget {limit:g} (remaining "
        f"{max(0.0, limit - spent):.4g}).",
    )
