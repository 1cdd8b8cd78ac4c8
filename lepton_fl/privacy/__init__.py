"""Privacy accounting, noise calibration and the budget rule (Opacus is the oracle)."""

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

__all__ = [
    "ACCOUNTANTS",
    "AccountantName",
    "AccountantStep",
    "BudgetDecision",
    "PrivacyAccountingError",
    "calibrate_noise_multiplier",
    "check_round",
    "epsilon_spent",
    "opacus_history",
]
