"""Privacy accounting, noise calibration and the budget rule (Opacus is the oracle).

The auditor cross-checks Opacus with Google's dp-accounting (:mod:`.crosscheck`).
"""

from lepton_fl.privacy.accounting import (
    ACCOUNTANTS,
    AccountantName,
    AccountantStep,
    PrivacyAccountingError,
    epsilon_spent,
    opacus_history,
)
from lepton_fl.privacy.budget import BudgetDecision, check_round
from lepton_fl.privacy.calibration import calibrate_noise_multiplier
from lepton_fl.privacy.crosscheck import CrossCheck, cross_check, epsilon_dp_accounting

__all__ = [
    "ACCOUNTANTS",
    "AccountantName",
    "AccountantStep",
    "BudgetDecision",
    "CrossCheck",
    "PrivacyAccountingError",
    "calibrate_noise_multiplier",
    "check_round",
    "cross_check",
    "epsilon_dp_accounting",
    "epsilon_spent",
    "opacus_history",
]
