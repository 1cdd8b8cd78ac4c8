"""An independent recomputation of a DP-SGD history's epsilon with Google's dp-accounting.

The auditor's offline verifier recomputes every epsilon a node recorded with two
accountants that share no code: Opacus (:func:`lepton_fl.privacy.accounting.epsilon_spent`)
and Google's ``dp-accounting`` (:func:`epsilon_dp_accounting`). :func:`cross_check` says
whether a reported epsilon under-states what either gives.

Each history entry ``(noise_multiplier, sample_rate, steps)`` is ``steps``
self-compositions of a Poisson-sampled Gaussian mechanism, composed over the history and
handed to ``dp_accounting.rdp.RdpAccountant`` (Opacus's default orders) or
``dp_accounting.pld.PLDAccountant``. Entries are validated and normalised exactly as
:func:`~lepton_fl.privacy.accounting.opacus_history` does (zero-step entries are dropped;
noise 0 and sample rates outside (0, 1] are rejected when the entry is built).

How the two libraries compare (dp-accounting 0.6.0 against Opacus 1.6, delta=1e-5):

* RDP: the same bound at the same orders, and for integer orders the same finite sum.
  dp-accounting's fractional-order series is conservative (it sums absolute values of
  the binomial terms, and gives up after 1000 terms, dropping that order; Opacus's values
  there match a numerical integration to 1e-12), so its epsilon is never below Opacus's
  and is higher where the optimal order is small: measured within 0.06% up to epsilon 8,
  0.5% up to 10, 0.9% up to 20, then +1.6% at 22, +25% at 63 and +81% at 187 (little
  noise, a high sample rate, many steps). An RDP epsilon far above any meaningful budget
  may therefore fail the RDP cross-check on dp-accounting's side alone.
* PLD against Opacus's PRV: Opacus returns the upper end of its error interval
  (estimate + ``PRV_EPS_ERROR`` = 0.01), so its PRV epsilon is 0.009-0.0145 above
  dp-accounting's pessimistic PLD epsilon everywhere measured (the excess grows slowly
  with epsilon: 0.0104 at 5, 0.012 at 50, 0.0145 at 177).

dp-accounting is imported lazily, on the first computation, so importing this module
stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lepton_fl.privacy.accounting import (
    AccountantName,
    AccountantStep,
    PrivacyAccountingError,
    _finite_real,
    check_accountant,
    check_delta,
    epsilon_spent,
    opacus_history,
)

DpAccountingMethod = Literal["rdp", "pld"]
DP_ACCOUNTING_METHODS: tuple[DpAccountingMethod, ...] = ("rdp", "pld")
#: The dp-accounting method that recomputes each Opacus accountant's epsilon.
CORRESPONDING_METHOD: dict[AccountantName, DpAccountingMethod] = {"rdp": "rdp", "prv": "pld"}

#: The RDP orders: Opacus's ``RDPAccountant.DEFAULT_ALPHAS``, for a like-for-like comparison.
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

#: PLD grid spacing in privacy-loss units. The pessimistic PLD stays an upper bound at any
#: spacing; 1e-3 is within 0.3% of 1e-4 on realistic histories (an epsilon up to 0.005
#: higher) and about ten times faster: building one Poisson-sampled Gaussian PLD takes
#: about 0.03 s at 1e-3 but 0.4 s at 1e-4, once per distinct (noise, sample rate).
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3

#: A reported epsilon may sit this far (relatively) below an accountant's without a flag.
DEFAULT_TOLERANCE = 0.02
#: ... and this far in absolute terms, so that epsilons near 0 are not flagged for noise.
ABSOLUTE_TOLERANCE = 1e-3


def _grouped_entries(history: Sequence[AccountantStep]) -> list[tuple[float, float, int]]:
    """The history as ``(noise, rate, steps)`` with one entry per distinct (noise, rate).

    Validation and the dropping of zero-step entries are :func:`opacus_history`'s.
    Composition commutes, so equal mechanisms anywhere in the history may be merged; this
    builds each distinct PLD once, which is what a PLD computation costs.
    """
    grouped: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in opacus_history(history):
        grouped[(sigma, rate)] = grouped.get((sigma, rate), 0) + steps
    return [(sigma, rate, steps) for (sigma, rate), steps in grouped.items()]


def _check_method(method: object) -> DpAccountingMethod:
    if method == "rdp":
        return "rdp"
    if method == "pld":
        return "pld"
    raise PrivacyAccountingError(
        f"method must be 'rdp' or 'pld', got {method!r}.", code="unknown_accountant"
    )


def _event(entries: Sequence[tuple[float, float, int]]) -> Any:
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)),
                steps,
            )
            for sigma, rate, steps in entries
        ]
    )


def _accountant(method: DpAccountingMethod) -> Any:
    from absl import logging as absl_logging
    from dp_accounting import pld, rdp

    # its RDP series for small fractional orders may not converge; it then drops the order
    # and logs one warning per order, which tells an auditor nothing
    absl_logging.set_verbosity(absl_logging.ERROR)
    if method == "rdp":
        return rdp.RdpAccountant(list(RDP_ORDERS))
    return pld.PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)


def _compose(accountant: Any, entries: Sequence[tuple[float, float, int]], method: str) -> None:
    try:
        accountant.compose(_event(entries))
    except (ValueError, ArithmeticError, RuntimeError, MemoryError) as err:
        raise PrivacyAccountingError(
            f"dp-accounting's {method.upper()} accountant could not compose this history "
            f"({err or type(err).__name__}); check the history entries for extreme values.",
            code="accountant_failed",
        ) from err


def _epsilon(accountant: Any, delta: float, method: DpAccountingMethod) -> float:
    try:
        epsilon = float(accountant.get_epsilon(delta))
    except (ValueError, ArithmeticError, RuntimeError, MemoryError) as err:
        raise PrivacyAccountingError(
            f"dp-accounting's {method.upper()} accountant could not compute epsilon for this "
            f"history ({err}).",
            code="accountant_failed",
        ) from err
    if math.isnan(epsilon):
        raise PrivacyAccountingError(
            f"dp-accounting's {method.upper()} accountant returned no epsilon.",
            code="accountant_failed",
        )
    return epsilon


def epsilon_dp_accounting(
    history: Sequence[AccountantStep], *, delta: float, method: DpAccountingMethod
) -> float:
    """Epsilon of ``history`` at ``delta`` by dp-accounting's RDP or PLD accountant."""
    delta = check_delta(delta)
    method = _check_method(method)
    entries = _grouped_entries(history)
    if not entries:
        return 0.0
    accountant = _accountant(method)
    _compose(accountant, entries, method)
    return max(0.0, _epsilon(accountant, delta, method))


def prefix_epsilons_dp_accounting(
    history: Sequence[AccountantStep], *, delta: float, method: DpAccountingMethod
) -> list[float]:
    """Epsilon after each entry of ``history``: one accountant, composed entry by entry
    (what a report's cumulative epsilons are checked against, in one pass)."""
    delta = check_delta(delta)
    method = _check_method(method)
    opacus_history(history)  # validates every entry the way Opacus does
    accountant = _accountant(method)
    epsilons: list[float] = []
    for step in history:
        if step.steps:
            _compose(accountant, [(step.noise_multiplier, step.sample_rate, step.steps)], method)
        epsilons.append(
            max(0.0, _epsilon(accountant, delta, method)) if step.steps or epsilons else 0.0
        )
    return epsilons


@dataclass(frozen=True)
class CrossCheck:
    """A reported epsilon against Opacus's and dp-accounting's recomputations.

    ``ok`` is False when ``reported`` is below either accountant's epsilon by more than
    the tolerance (see :func:`cross_check`); ``problem`` then says which and by how much.
    Over-stating epsilon is never a problem.
    """

    opacus_epsilon: float
    dp_accounting_epsilon: float
    reported: float
    ok: bool
    problem: str | None


def _shortfall(reported: float, value: float, tolerance: float) -> bool:
    if math.isinf(value):
        return not math.isinf(reported)
    return reported < value * (1.0 - tolerance) - ABSOLUTE_TOLERANCE


def _describe(name: str, reported: float, value: float) -> str:
    if math.isinf(value):
        return f"{name} gives infinity (no privacy)"
    gap = (value - reported) / value if value > 0 else math.inf
    return f"{name} gives {value:.6g} ({gap:.1%} above it)"


def cross_check(
    history: Sequence[AccountantStep],
    *,
    delta: float,
    accountant: str,
    reported: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CrossCheck:
    """Recompute ``history``'s epsilon with Opacus (``accountant``) and dp-accounting (RDP
    for RDP, PLD for PRV); ``ok`` unless ``reported`` is below either by more than
    ``tolerance`` (relative) plus ``ABSOLUTE_TOLERANCE``.

    That is, ``reported`` fails against an accountant's epsilon ``e`` when
    ``reported < e * (1 - tolerance) - ABSOLUTE_TOLERANCE``. The relative part absorbs the
    accountants' numerical differences (PRV/PLD are discretised; see the module notes); the
    absolute floor (0.001) keeps epsilons near 0, where a relative gap is only rounding,
    from failing. Only an under-stated epsilon fails: stating more is conservative.

    Raises:
        PrivacyAccountingError: an invalid input, or an accountant could not compute epsilon.
    """
    name = check_accountant(accountant)
    delta = check_delta(delta)
    tolerance = _check_tolerance(tolerance)
    stated = _stated(reported)
    opacus = epsilon_spent(list(history), delta=delta, accountant=name)
    google = epsilon_dp_accounting(history, delta=delta, method=CORRESPONDING_METHOD[name])
    return _judge(stated, opacus, google, name, tolerance)


def cross_check_prefixes(
    history: Sequence[AccountantStep],
    *,
    delta: float,
    accountant: str,
    reported: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[CrossCheck]:
    """`cross_check` of every prefix: ``reported[i]`` is the epsilon stated after
    ``history[i]``. dp-accounting composes the history once, entry by entry."""
    if len(reported) != len(history):
        raise ValueError("cross_check_prefixes needs one stated epsilon per history entry")
    name = check_accountant(accountant)
    delta = check_delta(delta)
    tolerance = _check_tolerance(tolerance)
    method = CORRESPONDING_METHOD[name]
    google = prefix_epsilons_dp_accounting(history, delta=delta, method=method)
    return [
        _judge(
            _stated(stated),
            epsilon_spent(list(history[: i + 1]), delta=delta, accountant=name),
            google[i],
            name,
            tolerance,
        )
        for i, stated in enumerate(reported)
    ]


def _stated(reported: object) -> float:
    rule = "a finite number >= 0"
    value = _finite_real(reported, name="the reported epsilon", code="invalid_epsilon", rule=rule)
    if value < 0.0:
        raise PrivacyAccountingError(
            f"the reported epsilon must be {rule}, got {reported!r}.", code="invalid_epsilon"
        )
    return value


def _check_tolerance(tolerance: object) -> float:
    rule = "a number in [0, 1) (relative: 0.02 allows a reported epsilon 2% low)"
    value = _finite_real(tolerance, name="tolerance", code="invalid_tolerance", rule=rule)
    if not 0.0 <= value < 1.0:
        raise PrivacyAccountingError(
            f"tolerance must be {rule}, got {tolerance!r}.", code="invalid_tolerance"
        )
    return value


def _judge(
    stated: float, opacus: float, google: float, name: AccountantName, tolerance: float
) -> CrossCheck:
    method = CORRESPONDING_METHOD[name]
    short = [
        _describe(label, stated, value)
        for label, value in (
            (f"Opacus {name.upper()}", opacus),
            (f"dp-accounting {method.upper()}", google),
        )
        if _shortfall(stated, value, tolerance)
    ]
    problem = None
    if short:
        problem = (
            f"the reported epsilon {stated:.6g} is below what its history supports: "
            + "; ".join(short)
            + f" (tolerance {tolerance:.0%})"
        )
    return CrossCheck(
        opacus_epsilon=opacus,
        dp_accounting_epsilon=google,
        reported=stated,
        ok=not short,
        problem=problem,
    )
