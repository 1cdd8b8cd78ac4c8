"""Noise calibration: the least noise that keeps a node within its epsilon target.

Like ``opacus.accountants.utils.get_noise_multiplier``, this searches the noise
multiplier with an Opacus accountant as the oracle, with two differences: the new run
is composed after the dataset's existing ``history`` (so a node can fit a run into what
remains of its lifetime budget), and the tolerance is on sigma, rounded towards more
noise.

The answer is the smallest point of a fixed geometric grid
``MIN_NOISE_MULTIPLIER * (1 / (1 - tolerance)) ** k`` that the oracle accepts. Because
the grid does not depend on the history, more history can never give less noise
(whatever the oracle accepts with history it also accepts without), and, the oracle
being monotone in sigma, the answer does not depend on how the search got there. The
search guesses grid points by interpolating log(epsilon) against log(sigma) (Illinois
regula falsi), which needs about 5-6 oracle calls where plain bisection needs about 11,
and falls back to bisection if interpolation stalls.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from lepton_fl.privacy.accounting import (
    AccountantName,
    AccountantStep,
    PrivacyAccountingError,
    check_accountant,
    check_delta,
    check_positive,
    epsilon_spent,
    rdp_epsilon_floor,
)

#: Calibration never returns less noise than this (epsilon is astronomical below it).
MIN_NOISE_MULTIPLIER = 0.01
#: Calibration gives up above about this much noise (the model would learn nothing).
MAX_NOISE_MULTIPLIER = 1e4
_START_NOISE_MULTIPLIER = 1.0
#: While looking for the first accepted (or refused) point, move sigma by at least
#: this factor and at most its fourth power per oracle call.
_MIN_JUMP, _MAX_JUMP = 1.1, 4.0
#: Interpolation steps before the search falls back to bisection.
_MAX_INTERPOLATIONS = 8


def calibrate_noise_multiplier(
    *,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    delta: float,
    accountant: AccountantName,
    history: Sequence[AccountantStep] = (),
    tolerance: float = 0.01,
) -> float:
    """Return the smallest noise multiplier that keeps ``history`` + the new run in budget.

    The result ``sigma`` satisfies ``epsilon_spent([*history, AccountantStep(sigma,
    sample_rate, steps)], delta=delta, accountant=accountant) <= target_epsilon``
    exactly (the oracle accepted that very value), and the grid point just below it,
    ``sigma * (1 - tolerance)``, was refused: sigma is within ``tolerance`` (relative)
    above the smallest that fits.
    It is never below :data:`MIN_NOISE_MULTIPLIER`, and a longer ``history`` never
    gives a smaller result.

    Raises:
        PrivacyAccountingError: invalid inputs; ``"budget_exhausted"`` when ``history``
            alone already spends ``target_epsilon``; ``"calibration_failed"`` when no
            noise multiplier up to :data:`MAX_NOISE_MULTIPLIER` reaches the target.
    """
    name = check_accountant(accountant)
    delta_value = check_delta(delta)
    planned = AccountantStep(_START_NOISE_MULTIPLIER, sample_rate, steps)
    if planned.steps < 1:
        raise PrivacyAccountingError(
            f"steps must be at least 1 to calibrate noise, got {steps!r}; a run without "
            "optimiser steps spends no privacy and needs no noise.",
            code="invalid_steps",
        )
    target = check_positive(target_epsilon, name="target_epsilon", code="invalid_target_epsilon")
    if isinstance(tolerance, bool) or not (
        isinstance(tolerance, numbers.Real) and 0.0 < float(tolerance) < 0.5
    ):
        raise PrivacyAccountingError(
            f"tolerance must be a number in (0, 0.5), got {tolerance!r}; 0.01 means sigma "
            "is within 1% of the smallest that fits.",
            code="invalid_tolerance",
        )
    base = list(history)
    where = f"(delta={delta_value:g}, {name})"
    spent = epsilon_spent(base, delta=delta_value, accountant=name)
    if spent >= target:
        raise PrivacyAccountingError(
            f"Cannot calibrate noise: this dataset has already spent epsilon {spent:.4g}, "
            f"which reaches the target of {target:.4g} {where}, so no further training "
            "fits. Raise the budget or stop training on this dataset.",
            code="budget_exhausted",
        )
    if name == "rdp":
        floor = rdp_epsilon_floor(base, sample_rate=planned.sample_rate, delta=delta_value)
        if floor >= target:
            raise _failed(
                target,
                where,
                f"with any amount of noise the RDP accountant reports at least {floor:.4g} "
                "here (the 'prv' accountant is tighter)",
            )

    grid = _Grid(float(tolerance))

    def epsilon_at(index: int) -> float:
        step = AccountantStep(grid.sigma(index), planned.sample_rate, planned.steps)
        try:
            return epsilon_spent([*base, step], delta=delta_value, accountant=name)
        except PrivacyAccountingError as exc:
            if exc.code == "prv_domain_too_large":  # only ever with too little noise
                return math.inf
            raise

    index = _smallest_accepted(epsilon_at, target, grid)
    if index is None:
        raise _failed(target, where, f"even {grid.sigma(grid.top):.6g} spends too much")
    return grid.sigma(index)


class _Grid:
    """Grid points ``MIN_NOISE_MULTIPLIER * ratio**k`` for ``k`` in ``0..top``."""

    def __init__(self, tolerance: float) -> None:
        self.ratio = 1.0 / (1.0 - tolerance)
        self.log_ratio = math.log(self.ratio)
        self.top = math.ceil(math.log(MAX_NOISE_MULTIPLIER / MIN_NOISE_MULTIPLIER) / self.log_ratio)

    def sigma(self, index: int) -> float:
        return MIN_NOISE_MULTIPLIER * self.ratio**index

    def index(self, sigma: float) -> float:
        return math.log(sigma / MIN_NOISE_MULTIPLIER) / self.log_ratio

    def steps(self, factor: float) -> int:
        return max(1, math.ceil(math.log(factor) / self.log_ratio))


def _smallest_accepted(
    epsilon_at: Callable[[int], float], target: float, grid: _Grid
) -> int | None:
    """Return the index ``k`` with ``epsilon_at(k) <= target < epsilon_at(k - 1)``.

    ``k == 0`` needs no refused neighbour; ``None`` means even ``grid.top`` is refused.
    Until both a refused and an accepted point are known, it extrapolates from the
    nearest point; then it interpolates log(epsilon) linearly in the grid index (the
    Illinois variant of regula falsi), and bisects after :data:`_MAX_INTERPOLATIONS`.
    """
    low, high = -1, grid.top + 1  # refused / accepted bounds; the ends are virtual
    values: dict[int, float] = {}
    weights = {"low": 1.0, "high": 1.0}
    last_end = ""
    interpolations = 0
    probe = round(grid.index(_START_NOISE_MULTIPLIER))
    while True:
        values[probe] = epsilon_at(probe)
        if values[probe] <= target:
            high, end = probe, "high"
        else:
            low, end = probe, "low"
        if high - low <= 1:
            return None if high > grid.top else high
        if low < 0 or high > grid.top:
            probe = _extrapolate(values, low, high, target, grid)
        elif interpolations >= _MAX_INTERPOLATIONS:
            probe = (low + high) // 2
        else:
            # Illinois: when the same end moves twice in a row, halve the other's weight.
            if end == last_end:
                weights["high" if end == "low" else "low"] /= 2
            else:
                weights = {"low": 1.0, "high": 1.0}
            interpolations += 1
            probe = _interpolate(values, low, high, target, weights)
        last_end = end


def _interpolate(
    values: dict[int, float], low: int, high: int, target: float, weights: dict[str, float]
) -> int:
    """Guess the index where log(epsilon) crosses log(target), strictly inside the bracket."""
    log_low, log_high = _log(values[low]), _log(values[high])
    if log_low is None or log_high is None or log_low <= log_high:
        return (low + high) // 2
    above = (log_low - math.log(target)) * weights["low"]
    below = (math.log(target) - log_high) * weights["high"]
    if above + below <= 0.0:
        return (low + high) // 2
    guess = low + above / (above + below) * (high - low)
    return min(max(math.ceil(guess), low + 1), high - 1)


def _extrapolate(values: dict[int, float], low: int, high: int, target: float, grid: _Grid) -> int:
    """From the one known end, guess the crossing assuming epsilon ~ 1/sigma."""
    near = low if high > grid.top else high
    log_near = _log(values[near])
    distance = math.inf if log_near is None else abs(log_near - math.log(target))
    shift = distance / grid.log_ratio
    move = math.ceil(min(max(shift, grid.steps(_MIN_JUMP)), grid.steps(_MAX_JUMP)))
    return min(low + move, grid.top) if near == low else max(high - move, 0)


def _log(value: float) -> float | None:
    return math.log(value) if 0.0 < value < math.inf else None


def _failed(target: float, where: str, why: str) -> PrivacyAccountingError:
    return PrivacyAccountingError(
        f"Cannot calibrate noise: no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps "
        f"epsilon within the target of {target:.4g} {where}; {why}. Raise the target "
        "epsilon, or use fewer steps or a lower sample rate.",
        code="calibration_failed",
    )
