"""Utility of DP federated learning per sector: centralised, federated, federated DP at eps 1/3/8.

Run: ``.venv/bin/python bench/utility.py [--sectors hospital,bank,factory,text] [--seeds 0,1,2,3,4]
[--quick] [--threads 1] [--set KEY=VALUE ...]``.

The sectors are the demo's (:data:`lepton.sectors.SECTORS`): the same task, model and tuned
hyperparameters that ``lepton demo --sector`` federates; this bench adds only its arms, seeds and
epsilons. ``--set`` overrides one hyperparameter of every chosen sector for a tuning sweep
(``learning_rate``, ``batch_size``, ``local_epochs``, ``rounds``, ``max_grad_norm`` or a model
option such as ``hidden=[]``, ``channels=[8,16]``, ``activation=tanh``); tune on seeds other than
the reported ones (``--seeds 100,101``), as every sector's ``tuned`` note says.

Arms, per sector, all scored the same way: the final global model on the pooled held-out test
rows of every site (each site's seeded, stratified 25% test split), accuracy and ROC-AUC (macro
one-vs-rest for more than two classes), printed beside the majority rate of those rows (the
accuracy of always answering the most frequent class).

- ``central``: every site's training rows pooled in one place, trained without DP for
  ``rounds x local_epochs`` epochs (the same passes over the data as the federated arms).
- ``fed``: FedAvg over the sites, ``rounds`` rounds of ``local_epochs`` local epochs each,
  weighted by each site's number of training examples, no DP.
- ``fed_dp_eps<e>``: the same FedAvg, each site training with the node's real DP-SGD engine
  (:class:`client_node.trainer.dp_sgd.DPTrainer`: Opacus per-sample clipping, Gaussian noise,
  Poisson sampling) at the noise multiplier that
  :func:`lepton_fl.privacy.calibrate_noise_multiplier` gives for the whole planned run (every
  round's steps) at target ``eps`` and the federation default ``delta = 1e-5`` with the RDP
  accountant, exactly as the node's trainer (``client_node/trainer/core.py``) calibrates it. The
  guarantee is sample-level, per site. (The demo also reserves a tenth of its epsilon for the
  DP release of the final evaluation; this bench evaluates exactly, on pooled rows, and spends
  all of ``eps`` on training.)

Federated here means in-process FedAvg over the sites' trainers (no Flower processes, no secure
aggregation): this measures the model's utility, not transport. Every arm uses the same model,
initial weights, optimiser (plain SGD), learning rate, batch size and clipping bound (clipping
only applies under DP) per sector. DP noise and Poisson sampling are seeded
(``reproducible_noise``: benchmarks only). Each seed draws other train/test splits, initial
weights and noise; the tables show mean and standard deviation over seeds. Prints one table per
sector, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from client_node.trainer.dp_sgd import DPTrainer, resolve_device
from client_node.trainer.evaluation import evaluate
from lepton.sectors import SECTORS, Sector
from lepton_fl.config import ModelConfig
from lepton_fl.datasets import DatasetError, get_task, load_local
from lepton_fl.datasets.examples import Examples, LocalSplit
from lepton_fl.models import ModelSpec, build_model, get_weights, model_spec, set_weights
from lepton_fl.privacy import AccountantName, calibrate_noise_multiplier

EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)
DELTA = 1e-5  # the federation default (lepton_fl.config.PrivacySpec)
ACCOUNTANT: AccountantName = "rdp"  # the federation default
TEST_FRACTION = 0.25
HYPER_KEYS = ("batch_size", "learning_rate", "max_grad_norm", "local_epochs", "rounds")


@dataclass(frozen=True)
class Hyper:
    """One sector's training setup, shared by every arm: the sector entry's, or overridden."""

    model: ModelSpec
    model_config: ModelConfig
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    local_epochs: int
    rounds: int

    @classmethod
    def of(cls, sector: Sector, overrides: Mapping[str, Any]) -> Hyper:
        """The sector's hyperparameters with ``overrides`` (``--set``) applied."""
        model_fields = {k: v for k, v in overrides.items() if k not in HYPER_KEYS}
        config = ModelConfig.model_validate({**sector.model.model_dump(), **model_fields})
        values: dict[str, Any] = {
            "batch_size": sector.training.batch_size,
            "learning_rate": sector.training.learning_rate,
            "max_grad_norm": sector.max_grad_norm,
            "local_epochs": sector.training.local_epochs,
            "rounds": sector.rounds,
        }
        values.update({k: v for k, v in overrides.items() if k in HYPER_KEYS})
        return cls(model=model_spec(config), model_config=config, **values)


@dataclass(frozen=True)
class Goal:
    """A sector's goal for the bench (issue 14), checked on the reported seeds' means."""

    text: str
    epsilon: float
    min_accuracy: float | None = None  # absolute
    min_points_above_majority: float | None = None
    min_roc_auc: float | None = None
    max_points_below_fed: float | None = None


GOALS: dict[str, tuple[Goal, ...]] = {
    "hospital": (
        Goal("fed DP at eps 1 within 1 point of fed accuracy", 1.0, max_points_below_fed=0.01),
    ),
    "factory": (
        Goal("fed DP at eps 8 accuracy >= 0.80", 8.0, min_accuracy=0.80),
        Goal("fed DP at eps 3 accuracy >= 0.76", 3.0, min_accuracy=0.76),
    ),
    "text": (
        Goal(
            "fed DP at eps 8 accuracy >= majority + 10 points and ROC-AUC >= 0.70",
            8.0,
            min_points_above_majority=0.10,
            min_roc_auc=0.70,
        ),
    ),
}


class Unsupported(Exception):
    """This sector cannot run with the code on this branch (the reason is the message)."""


@dataclass
class ArmResult:
    """One arm of one sector over all seeds."""

    arm: str
    epsilon: float | None
    accuracy: list[float] = field(default_factory=list)
    roc_auc: list[float] = field(default_factory=list)
    noise_multipliers: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "epsilon": self.epsilon,
            "accuracy_mean": round(statistics.fmean(self.accuracy), 4),
            "accuracy_sd": round(_sd(self.accuracy), 4),
            "roc_auc_mean": round(statistics.fmean(self.roc_auc), 4),
            "roc_auc_sd": round(_sd(self.roc_auc), 4),
            "accuracy": [round(a, 4) for a in self.accuracy],
            "roc_auc": [round(a, 4) for a in self.roc_auc],
            "noise_multipliers": self.noise_multipliers,
            "seconds": round(self.seconds, 2),
        }


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _model(hyper: Hyper, split: LocalSplit, seed: int) -> nn.Module:
    return build_model(
        hyper.model, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed
    )


def _trainer(
    hyper: Hyper, model: nn.Module, train: Examples, *, seed: int, device: torch.device
) -> DPTrainer:
    """The node's DP engine on ``train``; the batch is capped at the site's size, as the node
    does."""
    return DPTrainer(
        model=model,
        inputs=train.inputs,
        labels=train.labels,
        batch_size=min(hyper.batch_size, len(train)),
        learning_rate=hyper.learning_rate,
        max_grad_norm=hyper.max_grad_norm,
        device=device,
        seed=seed,
        reproducible_noise=True,
    )


def _score(model: nn.Module, test: Examples, device: torch.device) -> tuple[float, float]:
    result = evaluate(model, test.inputs, test.labels, device=device)
    if result.roc_auc is None:  # pragma: no cover - pooled test sets hold every class
        raise RuntimeError("the pooled test set holds a single class")
    return result.accuracy, result.roc_auc


def majority_rate(labels: npt.NDArray[np.integer]) -> float:
    """The accuracy of always answering the most frequent class of ``labels``."""
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / len(labels))


def _pool(parts: Sequence[Examples]) -> Examples:
    inputs = tuple(
        np.concatenate([p.inputs[k] for p in parts]) for k in range(len(parts[0].inputs))
    )
    return Examples(inputs=inputs, labels=np.concatenate([p.labels for p in parts]))


def _fedavg(
    weights: Sequence[list[npt.NDArray[np.float32]]], sizes: Sequence[int]
) -> list[npt.NDArray[np.float32]]:
    total = float(sum(sizes))
    return [
        np.sum([w[k] * (n / total) for w, n in zip(weights, sizes, strict=True)], axis=0).astype(
            np.float32
        )
        for k in range(len(weights[0]))
    ]


def run_central(
    hyper: Hyper, splits: Sequence[LocalSplit], seed: int, *, device: torch.device
) -> tuple[float, float]:
    """Pooled training rows, no DP, ``rounds x local_epochs`` epochs."""
    train = _pool([s.train for s in splits])
    trainer = _trainer(hyper, _model(hyper, splits[0], seed), train, seed=seed, device=device)
    trainer.train_non_private(epochs=hyper.rounds * hyper.local_epochs)
    return _score(trainer.model, _pool([s.test for s in splits]), device)


def run_federated(
    hyper: Hyper,
    splits: Sequence[LocalSplit],
    seed: int,
    *,
    epsilon: float | None,
    device: torch.device,
) -> tuple[float, float, dict[str, float]]:
    """FedAvg over the sites (example-weighted); DP-SGD at each site when ``epsilon`` is set.

    Returns accuracy, ROC-AUC and each site's noise multiplier (empty without DP).
    """
    global_model = _model(hyper, splits[0], seed)
    weights = get_weights(global_model)
    trainers = [
        _trainer(hyper, _model(hyper, s, seed), s.train, seed=seed * 1000 + i, device=device)
        for i, s in enumerate(splits)
    ]
    sigmas: dict[str, float] = {}
    if epsilon is not None:
        for split, trainer in zip(splits, trainers, strict=True):
            sigmas[split.name] = calibrate_noise_multiplier(
                sample_rate=trainer.sample_rate,
                steps=trainer.steps_per_epoch() * hyper.local_epochs * hyper.rounds,
                target_epsilon=epsilon,
                delta=DELTA,
                accountant=ACCOUNTANT,
            )
    for _ in range(hyper.rounds):
        updates: list[list[npt.NDArray[np.float32]]] = []
        for split, trainer in zip(splits, trainers, strict=True):
            set_weights(trainer.model, weights)
            if epsilon is None:
                trainer.train_non_private(epochs=hyper.local_epochs)
            else:
                trainer.train(epochs=hyper.local_epochs, noise_multiplier=sigmas[split.name])
            updates.append(get_weights(trainer.model))
        weights = _fedavg(updates, [t.num_examples for t in trainers])
    set_weights(global_model, weights)
    global_model.to(device)
    accuracy, auc = _score(global_model, _pool([s.test for s in splits]), device)
    return accuracy, auc, {k: round(v, 4) for k, v in sigmas.items()}


def load_splits(sector: Sector, seed: int) -> list[LocalSplit]:
    """Every site's seeded train/test split; :class:`Unsupported` if a package is missing."""
    try:
        return [
            load_local(sector.task, site, seed=seed, test_fraction=TEST_FRACTION)
            for site in sector.sites
        ]
    except DatasetError as err:
        if err.code != "missing_dependency":
            raise
        raise Unsupported(str(err)) from err


def run_sector(
    sector: Sector,
    hyper: Hyper,
    seeds: Sequence[int],
    epsilons: Sequence[float],
    *,
    device: torch.device,
    baselines: Sequence[str] = ("central", "fed"),
) -> tuple[list[ArmResult], list[float]]:
    """Every arm of ``sector`` over ``seeds``, and each seed's majority rate."""
    arms = [ArmResult(name, None) for name in ("central", "fed") if name in baselines]
    arms += [ArmResult(f"fed_dp_eps{e:g}", e) for e in epsilons]
    majority: list[float] = []
    for seed in seeds:
        splits = load_splits(sector, seed)
        majority.append(majority_rate(np.concatenate([s.test.labels for s in splits])))
        for arm in arms:
            start = time.perf_counter()
            if arm.arm == "central":
                accuracy, auc = run_central(hyper, splits, seed, device=device)
                sigmas: dict[str, float] = {}
            else:
                accuracy, auc, sigmas = run_federated(
                    hyper, splits, seed, epsilon=arm.epsilon, device=device
                )
            arm.seconds += time.perf_counter() - start
            arm.accuracy.append(accuracy)
            arm.roc_auc.append(auc)
            if sigmas:
                arm.noise_multipliers.append(sigmas)
    return arms, majority


def _describe(hyper: Hyper) -> str:
    config = hyper.model_config
    text = json.dumps(config.model_dump(mode="json"), separators=(",", ":"))
    if config.name == "tabular_mlp" and not config.hidden:
        return f"{text} (logistic regression)"
    return text


def _print_table(
    sector: Sector,
    hyper: Hyper,
    arms: Sequence[ArmResult],
    majority: Sequence[float],
    seeds: Sequence[int],
) -> None:
    info = get_task(sector.task)
    h = hyper
    print(
        f"\n{sector.key}: {sector.task} over {len(info.partitions)} sites "
        f"({', '.join(info.partitions)}); model {_describe(h)}, "
        f"{h.rounds} rounds x {h.local_epochs} local epoch(s), batch {h.batch_size}, "
        f"lr {h.learning_rate}, C {h.max_grad_norm}, delta {DELTA:g} ({ACCOUNTANT}), "
        f"{len(seeds)} seed(s) {list(seeds)}"
    )
    rate = statistics.fmean(majority)
    header = (
        f"{'arm':<16}{'accuracy':>18}{'majority':>10}{'vs majority':>13}{'ROC-AUC':>18}"
        f"{'sigma (per site)':>30}{'s':>8}"
    )
    print(header)
    print("-" * len(header))
    for arm in arms:
        mean = statistics.fmean(arm.accuracy)
        acc = f"{mean:.3f} ± {_sd(arm.accuracy):.3f}"
        auc = f"{statistics.fmean(arm.roc_auc):.3f} ± {_sd(arm.roc_auc):.3f}"
        sigma = ""
        if arm.noise_multipliers:
            sigma = " ".join(f"{v:.2f}" for v in arm.noise_multipliers[0].values())
        print(
            f"{arm.arm:<16}{acc:>18}{rate:>10.3f}{(mean - rate) * 100:>+12.1f}p{auc:>18}"
            f"{sigma:>30}{arm.seconds:>8.1f}"
        )


def check_goals(key: str, arms: Sequence[ArmResult], majority: float) -> list[dict[str, object]]:
    """Each goal of sector ``key`` with whether the means over seeds meet it."""
    fed_arm = next((a for a in arms if a.arm == "fed"), None)
    fed = statistics.fmean(fed_arm.accuracy) if fed_arm is not None else float("nan")
    results: list[dict[str, object]] = []
    for goal in GOALS.get(key, ()):
        arm = next((a for a in arms if a.epsilon == goal.epsilon), None)
        if arm is None:
            continue
        accuracy, auc = statistics.fmean(arm.accuracy), statistics.fmean(arm.roc_auc)
        met = True
        if goal.min_accuracy is not None:
            met &= accuracy >= goal.min_accuracy
        if goal.min_points_above_majority is not None:
            met &= accuracy - majority >= goal.min_points_above_majority
        if goal.min_roc_auc is not None:
            met &= auc >= goal.min_roc_auc
        if goal.max_points_below_fed is not None:
            met &= fed - accuracy <= goal.max_points_below_fed
        results.append(
            {
                "goal": goal.text,
                "met": met,
                "accuracy": round(accuracy, 4),
                "roc_auc": round(auc, 4),
                "majority": round(majority, 4),
                "fed_accuracy": round(fed, 4),
            }
        )
    return results


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse (``[]``, ``0.3``), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def main() -> None:
    """Run the chosen sectors, print their tables and the JSON summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sectors", default=",".join(SECTORS))
    parser.add_argument(
        "--seeds", default="0,1,2,3,4", help="comma-separated seeds to average over"
    )
    parser.add_argument(
        "--epsilons", default=",".join(f"{e:g}" for e in EPSILONS), help="DP arms' target eps"
    )
    parser.add_argument(
        "--baselines",
        default="central,fed",
        help="non-private arms to run besides the DP ones (a sweep may keep only fed, or '')",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, eps 1 only (a smoke run)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hyperparameter of every chosen sector (tuning sweeps)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    args = parser.parse_args()
    names = [s.strip() for s in args.sectors.split(",") if s.strip()]
    for name in names:
        if name not in SECTORS:
            parser.error(f"unknown sector {name!r}; choose from {', '.join(SECTORS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    epsilons: Sequence[float] = [float(e) for e in args.epsilons.split(",") if e.strip()]
    if args.quick:
        seeds, epsilons = seeds[:1], (1.0,)
    overrides = _overrides(args.overrides)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if set(baselines) - {"central", "fed"}:
        parser.error("--baselines takes central and/or fed")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")

    started = time.perf_counter()
    report: dict[str, object] = {}
    for name in names:
        sector = SECTORS[name]
        hyper = Hyper.of(sector, overrides)
        try:
            arms, majority = run_sector(
                sector, hyper, seeds, epsilons, device=device, baselines=baselines
            )
        except Unsupported as why:
            print(f"\n{name}: {sector.task}: skipped: {why}")
            report[name] = {"task": sector.task, "skipped": str(why)}
            continue
        _print_table(sector, hyper, arms, majority, seeds)
        rate = statistics.fmean(majority)
        goals = check_goals(name, arms, rate)
        for goal in goals:
            print(
                f"goal: {goal['goal']}: {'met' if goal['met'] else 'NOT met'} "
                f"(accuracy {goal['accuracy']:.3f}, ROC-AUC {goal['roc_auc']:.3f}, "
                f"majority {goal['majority']:.3f}, fed {goal['fed_accuracy']:.3f})"
            )
        hyper_json = asdict(hyper)
        hyper_json["model_config"] = hyper.model_config.model_dump(mode="json")
        report[name] = {
            "task": sector.task,
            "hyper": hyper_json,
            "overrides": overrides,
            "tuned": sector.tuned,
            "majority_rate": round(rate, 4),
            "majority_rates": [round(m, 4) for m in majority],
            "arms": [a.summary() for a in arms],
            "goals": goals,
        }
    seconds = time.perf_counter() - started
    print(
        f"\ntotal {seconds:.0f} s on {device}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    summary = {
        "bench": "utility",
        "seeds": seeds,
        "epsilons": list(epsilons),
        "delta": DELTA,
        "accountant": ACCOUNTANT,
        "test_fraction": TEST_FRACTION,
        "seconds": round(seconds, 1),
        "device": str(device),
        "sectors": report,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
