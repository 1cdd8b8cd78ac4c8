"""A node's membership-inference audit of the released model, released under DP.

The attack is the loss-threshold test ("lower loss means the record was trained on"): a
model that memorised its training rows gives them lower loss than rows it never saw, and
the attack's ROC-AUC over members (the node's training rows) against non-members (its
held-out rows) measures how much. 0.5 means the losses tell nothing.

Exact per-record losses never leave a node. It releases two histograms of the per-record
loss over fixed, data-independent bins (:data:`LOSS_BIN_EDGES`): one of its training rows,
one of its held-out rows. It releases them **together with** the confusion counts of its
scheduled evaluation, as one Gaussian release of one count vector:

- adding or removing one held-out record moves one confusion cell and one held-out bin by
  one each, so the vector's L2 sensitivity is ``sqrt(2)``; one training record moves one
  training bin by one (the model is fixed by then: adaptive composition);
- every cell therefore gets noise of standard deviation ``sqrt(2) * sigma``
  (:data:`JOINT_SENSITIVITY` ``* sigma``), and the release costs exactly what the
  evaluation alone costs at ``sigma``: one accountant step with ``noise_multiplier =
  sigma``, sample rate 1. The audit spends no extra epsilon; its price is more noise on
  the released confusion counts of that evaluation.

The noised counts are rounded but **not clamped at 0**: a count may come out negative.
Clamping would add a positive bias to every sparse bin (about 0.4 noise deviations each),
more of it relative to the smaller held-out histogram, which flattens that histogram toward
the high-loss bins and pushes the AUC above 0.5 when the model has learned nothing (seen:
0.59 on a demo run). Signed counts keep every sum, and so the pooled release, unbiased.

Everything else is post-processing of the released counts, free of further cost, and can
be recomputed by anyone who holds them: the AUC (:func:`histogram_auc`, ties within a bin
counted as half), sums over nodes, and a confidence interval (:func:`auc_interval`) by a
seeded parametric bootstrap that draws both the sampling of the records and the release's
own noise, so the interval is honest about both. No torch here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "JOINT_SENSITIVITY",
    "LOSS_BIN_EDGES",
    "MembershipRelease",
    "MembershipAudit",
    "audit_of",
    "auc_interval",
    "histogram_auc",
    "loss_histogram",
    "pool_releases",
    "release_histograms",
    "result_fields",
]

#: Upper edges of the per-record cross-entropy loss bins (nats); the last bin is open. One
#: constant for every node and task, so the binning depends on no node's data. Few bins: each
#: carries the release's noise, so fewer bins give a tighter interval (bench/privacy_audit.py
#: on a heart-disease hospital: interval half-width 0.19 with 11 bins, 0.11 with these 5,
#: at eps 3); a binary model at chance has loss ln 2 = 0.69, in the fourth bin.
LOSS_BIN_EDGES: tuple[float, ...] = (0.1, 0.3, 0.6, 1.2)
#: Bins of each histogram: one per edge plus the open last bin.
NUM_BINS = len(LOSS_BIN_EDGES) + 1
#: L2 sensitivity of the joint release (confusion counts + both histograms) in units of one
#: record: a held-out record moves one confusion cell and one held-out bin.
JOINT_SENSITIVITY = math.sqrt(2.0)
#: The largest count magnitude a release may state (far beyond any node's rows).
MAX_COUNT = 10**9
#: Bootstrap draws of :func:`auc_interval` and the default confidence level.
BOOTSTRAP_DRAWS = 2000
CONFIDENCE = 0.95

Counts = tuple[int, ...]


@dataclass(frozen=True)
class MembershipRelease:
    """What one node releases: noised loss histograms of its training rows (``members``)
    and held-out rows (``nonmembers``) over :data:`LOSS_BIN_EDGES`, rounded (a noised count
    may be negative: module docstring), and ``noise_std``, the standard deviation of the
    Gaussian noise on each count."""

    members: Counts
    nonmembers: Counts
    noise_std: float

    def __post_init__(self) -> None:
        for name in ("members", "nonmembers"):
            counts = getattr(self, name)
            if len(counts) != NUM_BINS:
                raise ValueError(f"{name} must have {NUM_BINS} bins, got {len(counts)}")
            if any(
                isinstance(c, bool) or not isinstance(c, int) or abs(c) > MAX_COUNT for c in counts
            ):
                raise ValueError(
                    f"{name} must be whole numbers within +-{MAX_COUNT:g}, got {list(counts)}"
                )
        if not (math.isfinite(self.noise_std) and self.noise_std > 0):
            raise ValueError(f"noise_std must be a finite number > 0, got {self.noise_std!r}")


@dataclass(frozen=True)
class MembershipAudit:
    """The attack's AUC on released histograms with its bootstrap interval (``None`` when a
    side's released counts sum to 0: the AUC is undefined)."""

    auc: float | None
    low: float | None
    high: float | None
    members: int  # the released counts' sums
    nonmembers: int


def loss_histogram(losses: npt.ArrayLike) -> Counts:
    """Counts of ``losses`` per bin of :data:`LOSS_BIN_EDGES` (a loss equal to an edge
    falls in the bin below it). Raises ``ValueError`` on NaN or negative losses."""
    values = np.asarray(losses, dtype=np.float64).ravel()
    if values.size and (np.isnan(values).any() or values.min() < 0):
        raise ValueError("per-record losses must be numbers >= 0")
    index = np.searchsorted(np.asarray(LOSS_BIN_EDGES), values, side="left")
    return tuple(int(c) for c in np.bincount(index, minlength=NUM_BINS))


def release_histograms(
    members: Counts,
    nonmembers: Counts,
    *,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> MembershipRelease:
    """The DP release of both histograms as part of the joint release (module docstring):
    every count gets ``N(0, (JOINT_SENSITIVITY * noise_multiplier)^2)`` noise, then is
    rounded (not clamped: module docstring). The caller noises the confusion counts of the
    same release at the same standard deviation and charges one step at
    ``noise_multiplier``."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    std = JOINT_SENSITIVITY * noise_multiplier
    generator = rng if rng is not None else np.random.default_rng()

    def noised(counts: Counts) -> Counts:
        exact = np.asarray(counts, dtype=np.float64)
        out = np.rint(exact + generator.normal(0.0, std, size=exact.shape))
        return tuple(int(v) for v in out)

    return MembershipRelease(noised(members), noised(nonmembers), std)


def histogram_auc(members: Sequence[float], nonmembers: Sequence[float]) -> float | None:
    """P(a member's loss bin is below a non-member's), ties counted half: the loss-threshold
    attack's ROC-AUC on binned losses, clipped to [0, 1] (signed noised counts can push the
    estimate past either end). ``None`` unless both sides sum above 0."""
    m = np.asarray(members, dtype=np.float64)
    n = np.asarray(nonmembers, dtype=np.float64)
    total_m, total_n = m.sum(), n.sum()
    if total_m <= 0 or total_n <= 0:
        return None
    above = total_n - np.cumsum(n)  # non-members in strictly higher bins
    return float(np.clip(np.sum(m * (above + 0.5 * n)) / (total_m * total_n), 0.0, 1.0))


def auc_interval(
    members: Counts,
    nonmembers: Counts,
    *,
    noise_std: float,
    confidence: float = CONFIDENCE,
    draws: int = BOOTSTRAP_DRAWS,
) -> tuple[float, float] | None:
    """A ``confidence`` interval for the AUC by parametric bootstrap on released counts.

    Each draw resamples the records (multinomial over the released shape, of the released
    size; negative counts count as 0 for the shape) and adds the release's own noise
    (``noise_std`` per count, rounded), then
    takes the AUC; the interval is the central ``confidence`` share of the draws. The
    generator is seeded from the inputs, so anyone recomputes the same interval. ``None``
    when the AUC is undefined.
    """
    if histogram_auc(members, nonmembers) is None:
        return None
    seed = hashlib.sha256(repr((members, nonmembers, float(noise_std))).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:8], "big"))
    m, n = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)

    def redraw(counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        shape = np.maximum(counts, 0.0)  # both sums are > 0, so some count is
        sampled = rng.multinomial(int(counts.sum()), shape / shape.sum(), size=draws)
        sampled = sampled.astype(np.float64)
        return np.rint(sampled + rng.normal(0.0, noise_std, size=sampled.shape))

    drawn_m, drawn_n = redraw(m), redraw(n)
    aucs = [
        a for a in (histogram_auc(drawn_m[i], drawn_n[i]) for i in range(draws)) if a is not None
    ]
    if not aucs:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(aucs), [tail, 1.0 - tail])
    return float(low), float(high)


def audit_of(release: MembershipRelease) -> MembershipAudit:
    """The AUC and its interval for one release (one node's, or nodes pooled)."""
    auc = histogram_auc(release.members, release.nonmembers)
    interval = auc_interval(release.members, release.nonmembers, noise_std=release.noise_std)
    return MembershipAudit(
        auc=auc,
        low=None if interval is None else interval[0],
        high=None if interval is None else interval[1],
        members=sum(release.members),
        nonmembers=sum(release.nonmembers),
    )


def pool_releases(releases: Sequence[MembershipRelease]) -> MembershipRelease | None:
    """The sum of several nodes' releases (their independent noises add in variance)."""
    if not releases:
        return None
    members = tuple(int(sum(r.members[i] for r in releases)) for i in range(NUM_BINS))
    nonmembers = tuple(int(sum(r.nonmembers[i] for r in releases)) for i in range(NUM_BINS))
    std = math.sqrt(sum(r.noise_std**2 for r in releases))
    return MembershipRelease(members, nonmembers, std)


def result_fields(release: MembershipRelease) -> dict[str, float | None]:
    """The report's figures of a release (``auc``, ``ci_low``, ``ci_high``): what the report
    states and what `lepton audit verify` recomputes from the stated release."""
    audit = audit_of(release)
    return {"auc": audit.auc, "ci_low": audit.low, "ci_high": audit.high}
