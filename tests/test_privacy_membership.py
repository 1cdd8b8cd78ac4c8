"""The membership-inference audit's release and its post-processing (lepton_fl.privacy.membership).

The release's privacy claim (one step at the evaluation's noise multiplier, for the joint
vector of confusion counts and both loss histograms) rests on its L2 sensitivity being
``sqrt(2)``: tests/test_privacy_gate.py checks that on a real model and real rows; here the
arithmetic, the noise and the interval.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lepton_fl.privacy.empirical import membership_auc
from lepton_fl.privacy.membership import (
    JOINT_SENSITIVITY,
    LOSS_BIN_EDGES,
    NUM_BINS,
    MembershipRelease,
    auc_interval,
    audit_of,
    histogram_auc,
    loss_histogram,
    pool_releases,
    release_histograms,
    result_fields,
)


def test_losses_fall_in_fixed_bins() -> None:
    assert len(LOSS_BIN_EDGES) + 1 == NUM_BINS
    first, last = LOSS_BIN_EDGES[0], LOSS_BIN_EDGES[-1]
    counts = loss_histogram([0.0, first, first + 1e-9, last, last + 1e-9, 100.0])
    assert sum(counts) == 6
    assert counts[0] == 2  # 0 and the edge itself fall in the first bin
    assert counts[1] == 1
    assert counts[-2] == 1  # the last edge, in the bin below it
    assert counts[-1] == 2  # above the last edge
    assert loss_histogram([]) == (0,) * NUM_BINS
    with pytest.raises(ValueError, match=">= 0"):
        loss_histogram([0.1, float("nan")])
    with pytest.raises(ValueError, match=">= 0"):
        loss_histogram([-0.1])


def test_binned_auc_is_the_exact_attack_auc_when_bins_separate_the_losses() -> None:
    rng = np.random.default_rng(0)
    # one loss per bin centre: every pair of records is in distinct bins or the same bin
    edges = np.array([0.0, *LOSS_BIN_EDGES, 2 * LOSS_BIN_EDGES[-1]])
    centres = (edges[:-1] + edges[1:]) / 2
    assert len(centres) == NUM_BINS
    weights = np.linspace(2, 0.2, NUM_BINS)
    members = rng.choice(centres, size=300, p=weights / weights.sum())
    nonmembers = rng.choice(centres, size=200)
    exact = membership_auc(members, nonmembers)[0]  # ties count half there too
    binned = histogram_auc(loss_histogram(members), loss_histogram(nonmembers))
    assert binned == pytest.approx(exact, abs=1e-12)
    assert binned is not None
    assert binned > 0.55


def test_auc_edge_cases() -> None:
    same = (3, 5, 0, 2, 1)[:NUM_BINS] + (0,) * (NUM_BINS - 5)
    assert histogram_auc(same, same) == pytest.approx(0.5)
    assert histogram_auc((0,) * NUM_BINS, same) is None
    zeros = (0,) * (NUM_BINS - 1)
    low, high = (4, *zeros), (*zeros, 4)
    assert histogram_auc(low, high) == 1.0  # every member below every non-member
    assert histogram_auc(high, low) == 0.0
    assert auc_interval((0,) * NUM_BINS, same, noise_std=1.0) is None


def test_release_noise_has_the_joint_spread_and_counts_stay_whole() -> None:
    sigma = 3.0
    members = loss_histogram(np.full(500, 0.05))
    nonmembers = loss_histogram(np.full(500, 0.6))
    rng = np.random.default_rng(1)
    draws = [
        release_histograms(members, nonmembers, noise_multiplier=sigma, rng=rng) for _ in range(400)
    ]
    assert {r.noise_std for r in draws} == {JOINT_SENSITIVITY * sigma}
    bin_ = LOSS_BIN_EDGES.index(0.1)  # 0.05 falls in (0.03, 0.1]
    values = np.array([r.members[bin_] for r in draws], dtype=float)
    assert values.mean() == pytest.approx(500, abs=1.0)
    assert values.std() == pytest.approx(math.sqrt(2) * sigma, rel=0.15)
    # an empty bin stays unbiased: counts are not clamped, so some come out negative
    empty = np.array([r.nonmembers[0] for r in draws], dtype=float)
    assert abs(empty.mean()) < 3 * math.sqrt(2) * sigma / math.sqrt(len(draws))
    assert (empty < 0).any()
    with pytest.raises(ValueError, match="noise_multiplier"):
        release_histograms(members, nonmembers, noise_multiplier=0.0)


def test_a_release_refuses_what_no_node_could_release() -> None:
    with pytest.raises(ValueError, match="bins"):
        MembershipRelease((1, 2), (1,) * NUM_BINS, 1.0)
    with pytest.raises(ValueError, match="whole numbers"):
        MembershipRelease((10**10,) + (0,) * (NUM_BINS - 1), (1,) * NUM_BINS, 1.0)
    with pytest.raises(ValueError, match="whole numbers"):
        MembershipRelease((1.5,) + (0,) * (NUM_BINS - 1), (1,) * NUM_BINS, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_std"):
        MembershipRelease((1,) * NUM_BINS, (1,) * NUM_BINS, float("inf"))


def test_interval_is_reproducible_and_covers_the_truth() -> None:
    """Over simulated nodes (records drawn from known loss distributions, released with
    noise), the 95% interval holds the population AUC in at least 88% of trials, and anyone
    recomputing it from the same release gets the same interval."""
    rng = np.random.default_rng(7)
    p_members = np.linspace(3.0, 0.5, NUM_BINS)
    p_members /= p_members.sum()
    p_non = np.full(NUM_BINS, 1.0 / NUM_BINS)
    truth = histogram_auc(p_members, p_non)
    assert truth is not None
    covered = 0
    trials = 100
    for _ in range(trials):
        members = tuple(int(c) for c in rng.multinomial(150, p_members))
        nonmembers = tuple(int(c) for c in rng.multinomial(60, p_non))
        release = release_histograms(members, nonmembers, noise_multiplier=2.0, rng=rng)
        interval = auc_interval(release.members, release.nonmembers, noise_std=release.noise_std)
        assert interval is not None
        covered += interval[0] <= truth <= interval[1]
    assert covered >= 0.88 * trials
    again = auc_interval(release.members, release.nonmembers, noise_std=release.noise_std)
    assert again == interval


def test_pooling_adds_counts_and_noise_variances() -> None:
    a = MembershipRelease((1,) * NUM_BINS, (2,) * NUM_BINS, 3.0)
    b = MembershipRelease((4,) * NUM_BINS, (0,) * NUM_BINS, 4.0)
    pooled = pool_releases([a, b])
    assert pooled == MembershipRelease((5,) * NUM_BINS, (2,) * NUM_BINS, 5.0)
    assert pool_releases([]) is None
    audit = audit_of(pooled)
    assert (audit.members, audit.nonmembers) == (5 * NUM_BINS, 2 * NUM_BINS)
    fields = result_fields(pooled)
    assert fields["auc"] == pytest.approx(0.5)
    assert fields["ci_low"] is not None
    assert fields["ci_low"] <= 0.5 <= (fields["ci_high"] or 0)


def test_pooled_auc_of_a_model_that_learned_nothing_is_centred_on_one_half() -> None:
    """Members and non-members with the same loss distribution (true AUC 0.5), few held-out
    rows, sparse bins and the noise of a demo-sized release, four nodes pooled: the
    released AUC averages 0.5. (Clamping noised counts at 0 gave about 0.56 here.)"""
    rng = np.random.default_rng(11)
    shape = np.zeros(NUM_BINS)
    shape[:3] = (0.3, 0.5, 0.2)  # sparse: the high-loss bins are empty
    aucs = []
    for _ in range(300):
        releases = []
        for size in (230, 220, 150, 90):
            members = tuple(int(c) for c in rng.multinomial(size, shape))
            nonmembers = tuple(int(c) for c in rng.multinomial(size // 3, shape))
            releases.append(release_histograms(members, nonmembers, noise_multiplier=5.0, rng=rng))
        pooled = pool_releases(releases)
        assert pooled is not None
        auc = histogram_auc(pooled.members, pooled.nonmembers)
        if auc is not None:
            aucs.append(auc)
    assert len(aucs) > 250
    assert float(np.mean(aucs)) == pytest.approx(0.5, abs=0.015)
