"""Empirical privacy auditing: lower bounds on epsilon from attacks on a released model.

Accounting (:mod:`.accounting`) gives an *upper* bound: the release is (epsilon, delta)-DP
whatever an attacker does. An audit runs an attack and turns its success into a *lower*
bound that holds with the stated confidence: if the lower bound exceeded the accounted
epsilon, the implementation (or the accounting) would be wrong. A small lower bound proves
nothing about tightness; attacks on the final model only are typically far from the
accounted value.

- :func:`epsilon_lower_bound`: the one-run audit of Steinke, Nasr and Jagielski, "Privacy
  Auditing with One (1) Training Run", NeurIPS 2023 (arXiv:2305.08846): ``m`` canaries,
  each included in training independently with probability 1/2; the auditor guesses
  "included" or "excluded" for ``r`` of them and is right ``v`` times.
- :func:`canary_guesses`: the guessing rule of the paper (top-``k`` scores "included",
  bottom-``k`` "excluded", the rest abstain).
- :func:`membership_auc`: the loss-threshold membership-inference attack, as the AUC of
  "lower loss means member", with a DeLong 95% confidence interval.

Only numpy and scipy: no torch, no node or coordinator code.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import special, stats

__all__ = [
    "canary_guesses",
    "epsilon_lower_bound",
    "membership_auc",
    "one_run_p_value",
]

#: Bisection steps on epsilon; the answer is the low end of the last bracket (conservative).
_BISECTIONS = 60
#: Above this epsilon, ``expit(epsilon)`` is 1.0 in float64: every observation is plausible.
_EPSILON_CEILING = 64.0


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def one_run_p_value(
    guesses_correct: int, guesses_made: int, *, epsilon: float, delta: float, canaries: int
) -> float:
    """The p-value of ``v`` correct out of ``r`` guesses on ``m`` canaries under (eps, delta)-DP.

    Steinke, Nasr & Jagielski 2023, their main theorem (Theorem 3.1; Corollary 5.4) as
    evaluated by their Appendix D reference code: with ``q = e^eps / (1 + e^eps)`` and
    ``B ~ Binomial(r, q)``, an (eps, delta)-DP algorithm lets any guesser reach ``W >= v``
    correct guesses with

        P[W >= v] <= P[B >= v] + 2 m delta * max_{i=1..v} P[v - i <= B < v] / i.

    Returns that right-hand side, capped at 1. ``delta = 0`` gives the pure-DP binomial tail.
    """
    v = _count(guesses_correct, "guesses_correct")
    r = _count(guesses_made, "guesses_made")
    m = _count(canaries, "canaries")
    if not v <= r <= m:
        raise ValueError(f"need guesses_correct <= guesses_made <= canaries, got {v}, {r}, {m}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if not (math.isfinite(delta) and 0 <= delta < 1):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[B >= v]
    if delta == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    # P[v - i <= B < v] = P[B >= v - i] - P[B >= v]
    window = np.asarray(stats.binom.sf(v - i - 1, r, q), dtype=np.float64) - tail
    alpha = float(np.max(np.maximum(window, 0.0) / i))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(
    guesses_correct: int,
    guesses_made: int,
    *,
    delta: float,
    confidence: float = 0.95,
    canaries: int,
) -> float:
    """The one-run audit's lower bound on epsilon (Steinke, Nasr & Jagielski 2023).

    Setting: ``m = canaries`` candidate examples, each included in the training set
    independently with probability 1/2; after training, the auditor makes
    ``r = guesses_made`` guesses ("included"/"excluded", abstaining on the rest, with ``r``
    fixed before looking at the result) and ``v = guesses_correct`` are right. With
    ``q(eps) = e^eps / (1 + e^eps)`` (the accuracy of eps-randomised response) and
    ``B ~ Binomial(r, q(eps))``, their main theorem (Theorem 3.1; Corollary 5.4) bounds the
    chance that an (eps, delta)-DP algorithm lets the guesser be right ``v`` or more times by

        p(eps) = P[B >= v] + 2 m delta * max_{i=1..v} P[v - i <= B < v] / i.

    The bound returned is the largest ``eps`` that this rejects at level
    ``beta = 1 - confidence``, i.e. with ``p(eps) < beta`` (their Appendix D,
    ``get_eps_audit``): with probability at least ``confidence`` over the canaries' coin
    flips and the training randomness, the algorithm is *not* (eps, delta)-DP for any eps
    below it. If even ``eps = 0`` is not rejected (for example guesses at chance level), the
    result is 0.0. Conservative by construction: ``eps`` is found by bisection keeping
    ``p(eps_low) < beta`` and the low end is returned (any eps with ``p(eps) < beta`` is a
    valid bound, so a non-monotone ``p`` can only make the answer lower than the best), and
    the result is never negative.

    Note: the number of guesses must not be tuned on the outcome; an auditor who tries ``K``
    guess counts and keeps the best must divide ``1 - confidence`` by ``K`` (Bonferroni).

    Raises ``ValueError`` unless ``0 <= guesses_correct <= guesses_made <= canaries``,
    ``0 <= delta < 1`` and ``0 < confidence < 1``.
    """
    v = _count(guesses_correct, "guesses_correct")
    r = _count(guesses_made, "guesses_made")
    m = _count(canaries, "canaries")
    if not v <= r <= m:
        raise ValueError(f"need guesses_correct <= guesses_made <= canaries, got {v}, {r}, {m}")
    if isinstance(delta, bool) or not (
        isinstance(delta, numbers.Real) and math.isfinite(delta) and 0 <= delta < 1
    ):
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}")
    if isinstance(confidence, bool) or not (
        isinstance(confidence, numbers.Real) and 0 < confidence < 1
    ):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    beta = 1.0 - float(confidence)

    def rejected(eps: float) -> bool:
        return one_run_p_value(v, r, epsilon=eps, delta=float(delta), canaries=m) < beta

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2.0 * high
        if high > _EPSILON_CEILING:  # pragma: no cover - expit(64) == 1.0: never rejected
            return low
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if rejected(middle):
            low = middle
        else:
            high = middle
    return max(0.0, low)


def canary_guesses(
    scores: Sequence[float] | npt.NDArray[np.floating],
    included: Sequence[bool] | npt.NDArray[np.bool_],
    *,
    k_included: int,
    k_excluded: int,
) -> tuple[int, int]:
    """Guess "included" for the ``k_included`` highest scores and "excluded" for the
    ``k_excluded`` lowest; abstain on the rest. Returns ``(correct, made)``.

    The guessing rule of Steinke et al. 2023 (their experiments). Higher score must mean "more
    likely included" (for example the drop in the canary's loss). Ties are broken by a
    stable sort on the canary's position, which does not depend on ``included``.
    """
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != truth.shape:
        raise ValueError(
            f"scores and included must be equal-length 1-D, got {s.shape}, {truth.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    k_in, k_out = _count(k_included, "k_included"), _count(k_excluded, "k_excluded")
    if k_in + k_out > len(s):
        raise ValueError(f"k_included + k_excluded = {k_in + k_out} exceeds {len(s)} canaries")
    order = np.argsort(-s, kind="stable")  # highest score first
    guessed_in = order[:k_in]
    guessed_out = order[len(s) - k_out :] if k_out else order[:0]
    correct = int(truth[guessed_in].sum()) + int((~truth[guessed_out]).sum())
    return correct, k_in + k_out


def membership_auc(
    member_losses: Sequence[float] | npt.NDArray[np.floating],
    nonmember_losses: Sequence[float] | npt.NDArray[np.floating],
) -> tuple[float, float, float]:
    """AUC of the loss-threshold membership attack, with a 95% DeLong confidence interval.

    The attack says "member" when the loss is below a threshold; its ROC AUC is
    ``P[loss(member) < loss(non-member)] + 0.5 * P[tie]`` (the Mann-Whitney statistic).
    0.5 is no better than chance. The interval is ``auc +- 1.96 * se`` with the DeLong,
    DeLong & Clarke-Pearson (1988) variance ``var(V10) / n_members + var(V01) /
    n_nonmembers`` of the structural components, clipped to [0, 1]; deterministic (no
    resampling). With perfectly separated losses the variance is 0 and the interval collapses
    to the point. Returns ``(auc, low, high)``.
    """
    members = np.asarray(member_losses, dtype=np.float64).ravel()
    others = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if len(members) < 2 or len(others) < 2:
        raise ValueError("membership_auc needs at least 2 members and 2 non-members")
    if not (np.isfinite(members).all() and np.isfinite(others).all()):
        raise ValueError("losses must be finite")
    # Score "member-ness" as -loss; V10[i]: share of non-members a member beats, V01[j]: share
    # of members that beat a non-member (ties count 1/2). Midranks make this O(n log n).
    score_in, score_out = -members, -others
    n_in, n_out = len(score_in), len(score_out)
    pooled = stats.rankdata(np.concatenate([score_in, score_out]))
    rank_in = stats.rankdata(score_in)
    rank_out = stats.rankdata(score_out)
    v10 = (pooled[:n_in] - rank_in) / n_out
    v01 = 1.0 - (pooled[n_in:] - rank_out) / n_in
    auc = float(v10.mean())
    variance = float(np.var(v10, ddof=1) / n_in + np.var(v01, ddof=1) / n_out)
    half = 1.959963984540054 * math.sqrt(max(variance, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)
