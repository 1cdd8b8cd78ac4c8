"""Privacy accounting: the epsilon of a node's DP-SGD history, computed by Opacus.

A node's history is a list of :class:`AccountantStep` entries, each exactly one entry of
an Opacus accountant's ``history`` (``(noise_multiplier, sample_rate, steps)``).
Epsilon is always computed by Opacus's own accountants; this module validates inputs,
normalises the history the way Opacus itself does, and turns Opacus's failures into
:class:`PrivacyAccountingError` with a message that says what to fix.

Opacus's accountant code is loaded lazily, on the first computation, and without torch
(:mod:`lepton_fl.privacy.opacus_accountants`): the coordinator computes every epsilon with
the same Opacus code as the nodes, and its image carries no torch.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lepton_fl.privacy.opacus_accountants import (
    OpacusAccountants,
    OpacusUnavailableError,
    opacus_accountants,
)

if TYPE_CHECKING:
    from collections.abc import Callable

AccountantName = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[AccountantName, ...] = ("rdp", "prv")

#: Opacus's default epsilon error for the PRV accountant (``get_epsilon(eps_error=...)``).
PRV_EPS_ERROR = 0.01
#: The largest PRV discretisation (number of grid points) we let Opacus build. Opacus
#: allocates several float64 arrays of this size; about 7.5 million points already take
#: about 1.6 GB and 14 s on one CPU, and a history with very little noise can ask for
#: billions, which kills the process instead of raising.
PRV_MAX_DOMAIN_SIZE = 2**23

_OpacusEntry = tuple[float, float, int]


class PrivacyAccountingError(ValueError):
    """Invalid accounting input, or an accountant that could not compute epsilon.

    ``code`` is a stable, machine-readable reason (for example ``"invalid_delta"``,
    ``"budget_exhausted"``); the message is a full sentence that says what to fix.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., PrivacyAccountingError], tuple[Any, ...]]:
        return (_rebuild_error, (type(self), str(self), self.code))


def _rebuild_error(
    cls: type[PrivacyAccountingError], message: str, code: str
) -> PrivacyAccountingError:
    return cls(message, code=code)


def _finite_real(value: object, *, name: str, code: str, rule: str) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyAccountingError(
            f"{name} must be {rule}, got {value!r} of type {type(value).__name__}.", code=code
        )
    number = float(value)
    if not math.isfinite(number):
        raise PrivacyAccountingError(f"{name} must be {rule}, got {value!r}.", code=code)
    return number


def check_finite(value: object, *, name: str, code: str) -> float:
    """Validate a finite real number (not a bool); ``code`` names the refusal."""
    return _finite_real(value, name=name, code=code, rule="a finite number")


def check_positive(value: object, *, name: str, code: str) -> float:
    """Validate a finite number greater than 0 (an epsilon target, a budget); ``code`` names
    the refusal."""
    rule = "a finite number greater than 0"
    number = _finite_real(value, name=name, code=code, rule=rule)
    if number <= 0.0:
        raise PrivacyAccountingError(f"{name} must be {rule}, got {value!r}.", code=code)
    return number


def check_delta(delta: object) -> float:
    """Validate delta: a finite number strictly between 0 and 1."""
    rule = "a number strictly between 0 and 1 (typically below 1/num_examples, e.g. 1e-5)"
    value = _finite_real(delta, name="delta", code="invalid_delta", rule=rule)
    if not 0.0 < value < 1.0:
        raise PrivacyAccountingError(f"delta must be {rule}, got {delta!r}.", code="invalid_delta")
    return value


def check_accountant(accountant: object) -> AccountantName:
    """Validate an accountant name: ``"rdp"`` or ``"prv"``."""
    if accountant == "rdp":
        return "rdp"
    if accountant == "prv":
        return "prv"
    raise PrivacyAccountingError(
        f"accountant must be 'rdp' or 'prv', got {accountant!r}.", code="unknown_accountant"
    )


@dataclass(frozen=True)
class AccountantStep:
    """One round of DP-SGD at one node: exactly one entry of an Opacus accountant history.

    ``steps`` optimiser steps, each with Poisson sampling at ``sample_rate`` and Gaussian
    noise of ``noise_multiplier`` times the clipping norm. Values are validated on
    construction (a :class:`PrivacyAccountingError` says which one is wrong) and
    normalised to ``float``/``float``/``int``.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma = _finite_real(
            self.noise_multiplier,
            name="noise_multiplier",
            code="invalid_noise_multiplier",
            rule="a finite number greater than 0 (DP-SGD without noise has no privacy)",
        )
        if sigma <= 0.0:
            raise PrivacyAccountingError(
                "noise_multiplier must be a finite number greater than 0 (DP-SGD without "
                f"noise has no privacy), got {self.noise_multiplier!r}.",
                code="invalid_noise_multiplier",
            )
        rate_rule = "a number in (0, 1] (the Poisson sampling probability, batch_size/num_examples)"
        rate = _finite_real(
            self.sample_rate, name="sample_rate", code="invalid_sample_rate", rule=rate_rule
        )
        if not 0.0 < rate <= 1.0:
            raise PrivacyAccountingError(
                f"sample_rate must be {rate_rule}, got {self.sample_rate!r}.",
                code="invalid_sample_rate",
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise PrivacyAccountingError(
                f"steps must be a whole number >= 0, got {self.steps!r} of type "
                f"{type(self.steps).__name__}.",
                code="invalid_steps",
            )
        count = int(self.steps)
        if count < 0:
            raise PrivacyAccountingError(
                f"steps must be a whole number >= 0, got {self.steps!r}.", code="invalid_steps"
            )
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", rate)
        object.__setattr__(self, "steps", count)


def opacus_history(history: Sequence[AccountantStep]) -> list[_OpacusEntry]:
    """Return ``history`` as the Opacus accountant history that stepping one would build.

    Consecutive entries with the same ``(noise_multiplier, sample_rate)`` are merged by
    adding their steps, exactly as ``RDPAccountant.step``/``PRVAccountant.step`` do, and
    entries with zero steps (no data touched) are dropped.
    """
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise PrivacyAccountingError(
            f"history must be a sequence of AccountantStep, got {type(history).__name__}.",
            code="invalid_history",
        )
    merged: list[_OpacusEntry] = []
    for index, step in enumerate(history):
        if not isinstance(step, AccountantStep):
            raise PrivacyAccountingError(
                f"history[{index}] must be an AccountantStep, got {step!r}; build entries "
                "with AccountantStep(noise_multiplier, sample_rate, steps).",
                code="invalid_history",
            )
        if step.steps == 0:
            continue
        if merged and merged[-1][0] == step.noise_multiplier and merged[-1][1] == step.sample_rate:
            sigma, rate, count = merged[-1]
            merged[-1] = (sigma, rate, count + step.steps)
        else:
            merged.append((step.noise_multiplier, step.sample_rate, step.steps))
    return merged


def epsilon_spent(
    history: Sequence[AccountantStep], *, delta: float, accountant: AccountantName
) -> float:
    """Return the epsilon that ``history`` has spent at ``delta``, computed by Opacus.

    Builds Opacus's ``RDPAccountant`` or ``PRVAccountant`` (loaded without torch), sets its
    ``history`` (merged as in :func:`opacus_history`) and returns ``get_epsilon(delta=delta)``,
    clamped below at 0. An empty history (or one with only zero-step entries) is 0.0.
    The result may be ``inf`` when the history gives no privacy at all.

    Raises:
        PrivacyAccountingError: an invalid input, or Opacus could not compute epsilon.
    """
    name = check_accountant(accountant)
    delta_value = check_delta(delta)
    entries = opacus_history(history)
    if not entries:
        return 0.0
    if name == "rdp":
        epsilon = _rdp_epsilon(entries, delta=delta_value)
    else:
        epsilon = _prv_epsilon(entries, delta=delta_value)
    if math.isnan(epsilon):
        raise PrivacyAccountingError(
            f"Opacus's {name} accountant returned NaN for this history at delta={delta_value:g}; "
            "check the history entries for extreme values.",
            code="accounting_failed",
        )
    return max(0.0, epsilon)


def rdp_epsilon_floor(
    history: Sequence[AccountantStep], *, sample_rate: float, delta: float
) -> float:
    """Return the RDP epsilon of ``history`` plus one more step with unbounded noise.

    The RDP accountant's conversion to (epsilon, delta) has a floor that no amount of
    noise goes below (about 0.103 at delta=1e-5 with Opacus's default orders). This
    asks Opacus for it by appending a zero-step entry, whose RDP is zero at every order.
    """
    delta_value = check_delta(delta)
    rate = AccountantStep(1.0, sample_rate, 0).sample_rate  # validates it
    entries = [*opacus_history(history), (1.0, rate, 0)]
    return max(0.0, _rdp_epsilon(entries, delta=delta_value))


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Opacus's RDP curve of one DP-SGD step at Opacus's default orders (cached).

    Opacus's ``compute_rdp`` returns ``steps`` times this curve, and ``RDPAccountant``
    sums those curves over its history, so composing from the cached one-step curve gives
    the same numbers as ``RDPAccountant.get_epsilon`` while evaluating each (sigma, q) once:
    the fractional orders cost ~0.1 s per curve, and a node evaluates its growing history
    every round.
    """
    opacus = _opacus()
    curve = opacus.rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=opacus.RDPAccountant.DEFAULT_ALPHAS,
    )
    return tuple(float(v) for v in curve)


def _rdp_epsilon(entries: list[_OpacusEntry], *, delta: float) -> float:
    import numpy as np

    opacus = _opacus()
    try:
        rdp = sum(np.asarray(_rdp_one_step(sigma, rate)) * steps for sigma, rate, steps in entries)
        with warnings.catch_warnings():
            # "Optimal order is the largest/smallest alpha": epsilon is still a valid
            # (conservative) bound; the warning only says a wider order range could be tighter.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            epsilon, _ = opacus.rdp_analysis.get_privacy_spent(
                orders=opacus.RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
            )
        return float(epsilon)
    except (ValueError, ArithmeticError) as exc:
        raise PrivacyAccountingError(
            f"Opacus's RDP accountant could not compute epsilon at delta={delta:g} ({exc}); "
            "check the history entries for extreme values.",
            code="accounting_failed",
        ) from exc


def _prv_epsilon(entries: list[_OpacusEntry], *, delta: float) -> float:
    return _prv_epsilon_of(tuple(entries), delta)


@functools.lru_cache(maxsize=1024)
def _prv_epsilon_of(entries: tuple[_OpacusEntry, ...], delta: float) -> float:
    """The PRV epsilon of a merged history, remembered per (history, delta).

    Opacus's PRV composition takes seconds (about 17 s for a node with ten runs of distinct
    noise here), and the ledger views and every metrics scrape ask again for histories that
    have not changed. The result is a pure function of its arguments; failures are not kept.
    """
    import numpy as np

    accountant = _guarded_prv_accountant_class()()
    accountant.history = list(entries)
    try:
        # At sample rate 1 (an evaluation release: the plain Gaussian mechanism) Opacus's PRV
        # takes log(1 - q) = log(0) inside an np.where whose other branch it uses; the
        # division warning is harmless there.
        with np.errstate(divide="ignore"):
            return float(
                accountant.get_epsilon(
                    delta=delta, eps_error=PRV_EPS_ERROR, delta_error=delta / 1000
                )
            )
    except _DomainTooLargeError as exc:
        raise PrivacyAccountingError(
            f"The PRV accountant would need a grid of {exc.size:,} points for this history "
            f"at delta={delta:g} (the limit is {PRV_MAX_DOMAIN_SIZE:,}), which needs too "
            "much memory; this happens with very little noise or very many steps. "
            "Use the 'rdp' accountant for this dataset, or train with more noise.",
            code="prv_domain_too_large",
        ) from None
    except (RuntimeError, ValueError, ArithmeticError, MemoryError) as exc:
        raise PrivacyAccountingError(
            f"Opacus's PRV accountant could not compute epsilon for this history at "
            f"delta={delta:g} ({exc or type(exc).__name__}). Use the 'rdp' accountant, "
            "or check that delta is small (typically below 1/num_examples).",
            code="prv_failed",
        ) from exc


def _opacus() -> OpacusAccountants:
    try:
        return opacus_accountants()
    except OpacusUnavailableError as exc:
        raise PrivacyAccountingError(str(exc), code="accountant_unavailable") from exc


class _DomainTooLargeError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@functools.cache
def _guarded_prv_accountant_class() -> type[Any]:
    """Opacus's PRVAccountant, refusing grids above PRV_MAX_DOMAIN_SIZE before allocating.

    Opacus sizes the grid in its private ``_get_domain`` and then allocates it; checking
    the size there lets a history with very little noise raise instead of exhausting
    memory. Everything else is Opacus's own ``get_epsilon``.
    """

    class GuardedPRVAccountant(_opacus().PRVAccountant):  # type: ignore[misc]
        def _get_domain(self, *args: Any, **kwargs: Any) -> Any:
            domain = super()._get_domain(*args, **kwargs)
            if int(domain.size) > PRV_MAX_DOMAIN_SIZE:
                raise _DomainTooLargeError(int(domain.size))
            return domain

    return GuardedPRVAccountant
