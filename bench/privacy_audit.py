"""Empirical privacy audit of a hospital's DP-SGD release: canaries (one run) and membership.

Run: ``.venv/bin/python bench/privacy_audit.py [--seed 0] [--repeats 10] [--canaries 500]
[--quick] [--threads 1]``.

What it audits: one hospital of the heart-disease demo (``--site``, default Cleveland, the
largest; the node's seeded, stratified 25% held-out split, split seed 0 as a node's data spec
has by default) trains the demo federation's model with the node's own DP-SGD engine
(:class:`client_node.trainer.dp_sgd.DPTrainer`: Opacus per-sample clipping, Gaussian noise,
Poisson sampling) and the demo's hyperparameters (``lepton.sectors.SECTORS["hospital"]``:
MLP with one hidden layer of 32, batch 16, learning rate 0.1, clipping norm 1, 2 local
epochs per round, and ``lepton demo``'s default 5 rounds; delta 1e-5, RDP accountant). The
noise multiplier is calibrated for the whole run with
:func:`lepton_fl.privacy.calibrate_noise_multiplier`, as the node does, and the *accounted*
epsilon is :func:`lepton_fl.privacy.epsilon_spent` over the recorded history (one
``AccountantStep`` per round, from the trainer's own ``TrainResult``). The released model is
the node's model after its last round, as if it trained alone (no averaging with the other
hospitals): the attacker's strongest position without seeing gradients.

Two attacks on that release, for target epsilon 1, 3, 8 and a non-private control:

- Canary audit, one training run (Steinke, Nasr & Jagielski, NeurIPS 2023): ``m`` canaries
  are out-of-distribution records in the task's 32-column feature space (every column +-3 at
  random, three times outside the schema's [-1, 1] range, with a random label). Each is added
  to the hospital's training rows independently with probability 1/2. The sampling population
  is fixed at ``rows + m`` (``DPTrainer(population=...)``, as a node inside secure
  aggregation samples by its size bucket), so the sampling rate, steps and noise do not depend
  on which canaries went in. After training every canary is scored by the drop of its loss
  from the (public, seeded) initial model to the release; the top ``k`` are guessed
  "included", the bottom ``k`` "excluded", and
  :func:`lepton_fl.privacy.empirical.epsilon_lower_bound` turns ``correct / 2k`` into a 95%
  lower bound on epsilon. ``k`` is tried at 10%, 25% and 50% of ``m`` and the best is kept,
  each test at confidence ``1 - 0.05 / 3`` (Bonferroni), so the reported bound is still a 95%
  bound.
- Membership inference on the hospital's own split: the loss-threshold attack's AUC between
  its training rows (members) and its held-out rows (non-members), with a DeLong 95% interval
  (:func:`lepton_fl.privacy.empirical.membership_auc`). Beside it, for the DP arms, what a
  node running the same attack as a federation's membership audit releases
  (:mod:`lepton_fl.privacy.membership`: both loss histograms noised at sqrt(2) times the
  evaluation's noise multiplier, which :func:`lepton_fl.privacy.evaluation.calibrate_run`
  gives for this run with the default evaluation share) and the AUC and bootstrap interval
  the report computes from it: how well the DP release recovers the exact figure.

Each arm is audited ``--repeats`` times (seeds ``seed, seed+1, ...``; one seed gives every arm
the same canaries and coin flips) and every run is its own one-run audit (the per-run table).
The pooled table then treats one arm's runs as a single audit with ``repeats x m`` canaries:
the runs are independent and each canary is in one run only, so the joint release is
(eps, delta)-DP in each canary's coin flip and the same theorem applies (more canaries, a
tighter bound); the guess counts are the same shares of the pooled canaries.

The non-private control trains the same model, data and canaries with
``DPTrainer.train_non_private``: plain minibatch SGD, shuffled batches of 16, no clipping and
no noise (its accounted epsilon is infinite).

Reading the figures: the empirical bound is a *lower* bound that holds with 95% confidence;
it says "the release is at least this leaky", never "at most". It need not be tight, and
for attacks on the final model of DP-SGD it is typically far below the accounted epsilon
(the accountant assumes an adversary who sees every noisy gradient and crafts worst-case
inputs). It must never exceed the accounted epsilon: that would mean a bug in the training
or in the accounting (or a fluke, at most 5% likely for any one bound), and this bench
exits with status 1 if it happens (``tests/test_privacy_empirical.py`` pins the same
property). The non-private control must show a visibly higher bound. Seeds are
reproducible (``reproducible_noise``: benchmarks only). Prints both tables, then one JSON
object on the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from client_node.trainer.dp_sgd import DPTrainer, resolve_device
from lepton.sectors import SECTORS
from lepton_fl.datasets import TabularSplit, load_partition
from lepton_fl.models import ModelSpec, build_model
from lepton_fl.privacy import (
    AccountantName,
    AccountantStep,
    calibrate_noise_multiplier,
    epsilon_spent,
)
from lepton_fl.privacy.empirical import canary_guesses, epsilon_lower_bound, membership_auc
from lepton_fl.privacy.evaluation import calibrate_run, evaluation_epsilon_share
from lepton_fl.privacy.membership import audit_of, loss_histogram, release_histograms

EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)
DELTA = 1e-5  # the federation default (lepton_fl.config.PrivacySpec), as the demo uses
ACCOUNTANT: AccountantName = "rdp"  # the federation default
CONFIDENCE = 0.95
TASK = "heart_disease"
TEST_FRACTION = 0.25  # the node's default held-out share (client_node.settings.DataSpec)
SPLIT_SEED = 0  # the node's default data seed
DEMO_ROUNDS = 5  # the hospital sector's rounds, `lepton demo`'s default (lepton.sectors)
#: Guess counts tried, per side, as shares of the canaries; Bonferroni over all of them.
GUESS_SHARES: tuple[float, ...] = (0.1, 0.25, 0.5)


@dataclass(frozen=True)
class AuditConfig:
    """The training and canary setup of one audit run (the demo's hospital settings)."""

    canaries: int = 500
    canary_scale: float = 3.0
    rounds: int = DEMO_ROUNDS
    local_epochs: int = SECTORS["hospital"].training.local_epochs
    batch_size: int = SECTORS["hospital"].training.batch_size
    learning_rate: float = SECTORS["hospital"].training.learning_rate
    max_grad_norm: float = SECTORS["hospital"].max_grad_norm
    hidden: tuple[int, ...] = tuple(SECTORS["hospital"].model.hidden)
    delta: float = DELTA
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class AuditResult:
    """One training run (one target epsilon, or the control) and both attacks on it."""

    target_epsilon: float | None  # None: the non-private control
    noise_multiplier: float
    accounted_epsilon: float  # inf for the control
    lower_bound: float
    guesses_correct: int
    guesses_made: int
    canaries: int
    canaries_included: int
    canary_auc: float  # AUC of the loss-drop score, included vs excluded canaries
    mia_auc: float
    mia_low: float
    mia_high: float
    # the membership audit's DP release of the same attack (None for the control)
    released_auc: float | None
    released_low: float | None
    released_high: float | None
    test_accuracy: float
    seed: int
    seconds: float
    scores: tuple[float, ...] = field(default=(), repr=False)  # per canary, for pooling
    included: tuple[bool, ...] = field(default=(), repr=False)

    def row(self) -> dict[str, Any]:
        """JSON-friendly figures (the control's epsilon as null)."""
        out = asdict(self)
        del out["scores"], out["included"]
        for key in ("noise_multiplier", "lower_bound", "canary_auc", "mia_auc", "mia_low"):
            out[key] = round(out[key], 4)
        out["mia_high"] = round(self.mia_high, 4)
        for key in ("released_auc", "released_low", "released_high"):
            value = out[key]
            out[key] = None if value is None else round(value, 4)
        out["test_accuracy"] = round(self.test_accuracy, 4)
        out["seconds"] = round(self.seconds, 2)
        out["accounted_epsilon"] = (
            round(self.accounted_epsilon, 4) if math.isfinite(self.accounted_epsilon) else None
        )
        return out


def make_canaries(
    count: int, num_features: int, *, scale: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``count`` out-of-distribution records: every column ``+-scale``, random binary label."""
    x = scale * rng.choice(np.array([-1.0, 1.0]), size=(count, num_features))
    y = rng.integers(0, 2, size=count)
    return x.astype(np.float32), y.astype(np.int64)


def _losses(model: nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Any:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        logits = model(torch.as_tensor(x, device=device))
        loss = nn.functional.cross_entropy(
            logits, torch.as_tensor(y, device=device), reduction="none"
        )
    model.train(was_training)
    return loss.cpu().numpy().astype(np.float64)


def bound_from_scores(
    scores: npt.NDArray[np.float64], included: npt.NDArray[np.bool_], config: AuditConfig
) -> tuple[float, int, int]:
    """Best Bonferroni-corrected bound over :data:`GUESS_SHARES`: ``(bound, correct, made)``."""
    m = len(scores)
    ks = sorted({max(1, round(share * m)) for share in GUESS_SHARES if round(share * m) * 2 <= m})
    ks = ks or [m // 2]
    level = 1.0 - (1.0 - config.confidence) / len(ks)
    best = (0.0, 0, 0)
    for k in ks:
        correct, made = canary_guesses(scores, included, k_included=k, k_excluded=k)
        bound = epsilon_lower_bound(correct, made, delta=config.delta, confidence=level, canaries=m)
        if bound > best[0] or best[2] == 0:
            best = (bound, correct, made)
    return best


def audit_once(
    split: TabularSplit,
    config: AuditConfig,
    *,
    epsilon: float | None,
    seed: int,
    device: torch.device | None = None,
) -> AuditResult:
    """Train once with canaries at target ``epsilon`` (None: the non-private control); audit.

    ``seed`` draws the canaries, their coin flips, the initial weights and (reproducibly)
    the sampling and noise; the same seed gives every arm the same canaries and coin flips.
    """
    device = device or torch.device("cpu")
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 20230516])
    m = config.canaries
    canary_x, canary_y = make_canaries(m, split.num_features, scale=config.canary_scale, rng=rng)
    included = rng.random(m) < 0.5
    x = np.concatenate([split.x_train, canary_x[included]])
    y = np.concatenate([split.y_train, canary_y[included]])
    model = build_model(
        ModelSpec(hidden=config.hidden),
        num_features=split.num_features,
        num_classes=split.num_classes,
        seed=seed,
    )
    before = _losses(model, canary_x, canary_y)  # the initial model is public (seeded)
    population = len(split.y_train) + m  # fixed whatever the coin flips: q does not leak them
    trainer = DPTrainer(
        model=model,
        x=x,
        y=y,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_grad_norm=config.max_grad_norm,
        device=device,
        seed=seed,
        reproducible_noise=True,
        population=population,
    )
    evaluation_sigma: float | None = None
    if epsilon is None:
        sigma, accounted = 0.0, math.inf
        for _ in range(config.rounds):
            trainer.train_non_private(epochs=config.local_epochs)
    else:
        sigma = calibrate_noise_multiplier(
            sample_rate=trainer.sample_rate,
            steps=trainer.steps_per_epoch() * config.local_epochs * config.rounds,
            target_epsilon=epsilon,
            delta=config.delta,
            accountant=ACCOUNTANT,
        )
        history = [
            trainer.train(epochs=config.local_epochs, noise_multiplier=sigma)
            for _ in range(config.rounds)
        ]
        accounted = epsilon_spent(
            [AccountantStep(r.noise_multiplier, r.sample_rate, r.steps) for r in history],
            delta=config.delta,
            accountant=ACCOUNTANT,
        )
        evaluation_sigma = calibrate_run(
            sample_rate=trainer.sample_rate,
            steps=trainer.steps_per_epoch() * config.local_epochs * config.rounds,
            target_epsilon=epsilon,
            evaluation_epsilon=evaluation_epsilon_share(epsilon, None),
            evaluations=1,
            delta=config.delta,
            accountant=ACCOUNTANT,
        ).evaluation_noise_multiplier
    released = trainer.model
    scores = before - _losses(released, canary_x, canary_y)  # loss drop: higher = "included"
    bound, correct, made = bound_from_scores(scores, included, config)
    canary_auc, _, _ = membership_auc(-scores[included], -scores[~included])
    member = _losses(released, split.x_train, split.y_train)
    held_out = _losses(released, split.x_test, split.y_test)
    mia, mia_low, mia_high = membership_auc(member, held_out)
    released_audit = None
    if evaluation_sigma is not None:
        release = release_histograms(
            loss_histogram(member),
            loss_histogram(held_out),
            noise_multiplier=evaluation_sigma,
            rng=np.random.default_rng([seed, 1]),
        )
        released_audit = audit_of(release)
    with torch.no_grad():
        logits = released(torch.as_tensor(split.x_test, device=device))
        accuracy = float((logits.argmax(1).cpu().numpy() == split.y_test).mean())
    return AuditResult(
        target_epsilon=epsilon,
        noise_multiplier=sigma,
        accounted_epsilon=accounted,
        lower_bound=bound,
        guesses_correct=correct,
        guesses_made=made,
        canaries=m,
        canaries_included=int(included.sum()),
        canary_auc=canary_auc,
        mia_auc=mia,
        mia_low=mia_low,
        mia_high=mia_high,
        released_auc=None if released_audit is None else released_audit.auc,
        released_low=None if released_audit is None else released_audit.low,
        released_high=None if released_audit is None else released_audit.high,
        test_accuracy=accuracy,
        seed=seed,
        seconds=time.perf_counter() - start,
        scores=tuple(float(v) for v in scores),
        included=tuple(bool(v) for v in included),
    )


@dataclass(frozen=True)
class PooledAudit:
    """One arm's canaries pooled over its independent runs.

    Valid as one one-run audit: the runs are independent and every canary is in exactly one
    of them, so the joint release is (eps, delta)-DP in each canary's coin flip (parallel
    composition) with ``runs x m`` canaries; the guess counts are the same shares as per run.
    """

    target_epsilon: float | None
    accounted_epsilon: float  # the largest of the runs' (they are equal)
    runs: int
    canaries: int
    lower_bound: float
    guesses_correct: int
    guesses_made: int
    canary_auc: float

    def row(self) -> dict[str, Any]:
        """JSON-friendly figures (the control's epsilon as null)."""
        out = asdict(self)
        out["lower_bound"] = round(self.lower_bound, 4)
        out["canary_auc"] = round(self.canary_auc, 4)
        out["accounted_epsilon"] = (
            round(self.accounted_epsilon, 4) if math.isfinite(self.accounted_epsilon) else None
        )
        return out


def pool(results: list[AuditResult], config: AuditConfig) -> PooledAudit:
    """Pool the canaries of one arm's runs (distinct seeds, so distinct canaries)."""
    if len({r.target_epsilon for r in results}) != 1 or len({r.seed for r in results}) != len(
        results
    ):
        raise ValueError("pool the runs of one arm, one per seed")
    scores = np.array([v for r in results for v in r.scores], dtype=np.float64)
    included = np.array([v for r in results for v in r.included], dtype=bool)
    bound, correct, made = bound_from_scores(scores, included, config)
    auc, _, _ = membership_auc(-scores[included], -scores[~included])
    return PooledAudit(
        target_epsilon=results[0].target_epsilon,
        accounted_epsilon=max(r.accounted_epsilon for r in results),
        runs=len(results),
        canaries=len(scores),
        lower_bound=bound,
        guesses_correct=correct,
        guesses_made=made,
        canary_auc=auc,
    )


def _labels(target: float | None, accounted: float) -> tuple[str, str]:
    """The table's target and accounted epsilon columns."""
    return (
        "no DP" if target is None else f"{target:g}",
        "inf" if not math.isfinite(accounted) else f"{accounted:.3f}",
    )


def _print_table(results: list[AuditResult]) -> None:
    header = (
        f"{'target eps':>10}{'seed':>6}{'sigma':>8}{'accounted eps':>15}{'lower bound':>13}"
        f"{'correct/made':>14}{'canary AUC':>12}{'MIA AUC [95% CI]':>24}"
        f"{'released MIA AUC [95%]':>26}{'test acc':>10}{'s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        target, accounted = _labels(r.target_epsilon, r.accounted_epsilon)
        mia = f"{r.mia_auc:.3f} [{r.mia_low:.3f}, {r.mia_high:.3f}]"
        released = "-"
        if r.released_auc is not None:
            released = f"{r.released_auc:.3f} [{r.released_low:.3f}, {r.released_high:.3f}]"
        print(
            f"{target:>10}{r.seed:>6}{r.noise_multiplier:>8.3f}{accounted:>15}"
            f"{r.lower_bound:>13.3f}{f'{r.guesses_correct}/{r.guesses_made}':>14}"
            f"{r.canary_auc:>12.3f}{mia:>24}{released:>26}{r.test_accuracy:>10.3f}"
            f"{r.seconds:>6.1f}"
        )


def _print_pooled(pooled: list[PooledAudit], results: list[AuditResult]) -> None:
    header = (
        f"{'target eps':>10}{'accounted eps':>15}{'lower bound':>13}{'correct/made':>14}"
        f"{'canaries':>10}{'canary AUC':>12}{'MIA AUC (mean of runs)':>24}"
    )
    print(header)
    print("-" * len(header))
    for p in pooled:
        target, accounted = _labels(p.target_epsilon, p.accounted_epsilon)
        mia = float(np.mean([r.mia_auc for r in results if r.target_epsilon == p.target_epsilon]))
        print(
            f"{target:>10}{accounted:>15}{p.lower_bound:>13.3f}"
            f"{f'{p.guesses_correct}/{p.guesses_made}':>14}{p.canaries:>10}"
            f"{p.canary_auc:>12.3f}{mia:>24.3f}"
        )


def main() -> None:
    """Audit every target epsilon and the control; print the table and the JSON summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="first audit seed")
    parser.add_argument(
        "--repeats", type=int, default=10, help="independent one-run audits (seeds seed..)"
    )
    parser.add_argument("--canaries", type=int, default=AuditConfig.canaries)
    parser.add_argument("--site", default="cleveland", help="the audited hospital")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 canaries, 2 rounds, one repeat"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, auto (CUDA if present), cuda")
    args = parser.parse_args()
    config = AuditConfig(canaries=args.canaries)
    repeats = args.repeats
    if args.quick:
        config = replace(config, canaries=min(config.canaries, 100), rounds=2)
        repeats = 1
    if config.canaries < 2 or repeats < 1:
        parser.error("need --canaries >= 2 and --repeats >= 1")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")

    started = time.perf_counter()
    split = load_partition(TASK, args.site, seed=SPLIT_SEED, test_fraction=TEST_FRACTION)
    results: list[AuditResult] = []
    for seed in range(args.seed, args.seed + repeats):
        for epsilon in (*EPSILONS, None):
            results.append(audit_once(split, config, epsilon=epsilon, seed=seed, device=device))
    print(
        f"privacy audit: {TASK}, hospital {args.site} ({len(split.y_train)} training rows, "
        f"{len(split.y_test)} held out); model MLP {config.hidden}, {config.rounds} rounds x "
        f"{config.local_epochs} local epochs, batch {config.batch_size}, lr "
        f"{config.learning_rate}, C {config.max_grad_norm}, delta {config.delta:g} "
        f"({ACCOUNTANT}); {config.canaries} canaries (+-{config.canary_scale:g}, each in with "
        f"p 1/2); bounds at {config.confidence:.0%} confidence"
    )
    print(f"\nper run ({config.canaries} canaries each):")
    _print_table(results)
    pooled = [
        pool([r for r in results if r.target_epsilon == epsilon], config)
        for epsilon in (*EPSILONS, None)
    ]
    print(f"\npooled over the {repeats} independent run(s) of each arm:")
    _print_pooled(pooled, results)
    within = all(
        r.lower_bound <= r.accounted_epsilon for r in results if r.target_epsilon is not None
    ) and all(p.lower_bound <= p.accounted_epsilon for p in pooled if p.target_epsilon is not None)
    control_above = all(
        control.lower_bound
        > max(
            r.lower_bound
            for r in results
            if r.seed == control.seed and r.target_epsilon is not None
        )
        for control in results
        if control.target_epsilon is None
    )
    control_pooled = pooled[-1].lower_bound > max(p.lower_bound for p in pooled[:-1])
    print(
        f"\nlower bound <= accounted eps in every DP run and pool: "
        f"{'yes' if within else 'NO (bug?)'}; control bound above every DP bound of its "
        f"seed: {'yes' if control_above else 'no'}, and pooled: "
        f"{'yes' if control_pooled else 'no'}"
    )
    audited = [r for r in results if r.released_low is not None and r.released_high is not None]
    covered = sum(
        r.released_low is not None
        and r.released_high is not None
        and r.released_low <= r.mia_auc <= r.released_high
        for r in audited
    )
    print(
        f"released membership audit: its interval holds the exact MIA AUC in {covered} of "
        f"{len(audited)} DP runs"
    )
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s on {device}, torch {torch.__version__}, {args.threads} thread(s)")
    summary = {
        "bench": "privacy_audit",
        "task": TASK,
        "site": args.site,
        "seeds": list(range(args.seed, args.seed + repeats)),
        "config": asdict(config),
        "accountant": ACCOUNTANT,
        "guess_shares": list(GUESS_SHARES),
        "pooled": [p.row() for p in pooled],
        "rows": [r.row() for r in results],
        "bound_within_accounted": within,
        "control_above_dp": control_above and control_pooled,
        "seconds": round(seconds, 1),
        "device": str(device),
    }
    print(json.dumps(summary))
    if not within:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
