"""DP-SGD step time over non-private step time: same model, same batch, measured side by side.

Run: ``.venv/bin/python bench/dp_overhead.py [--steps 200] [--warmup 50] [--threads 1]
[--modes auto,hooks,ew,ghost]``.

What is timed is the node trainer's own step (:class:`client_node.trainer.dp_sgd.DPTrainer`):
the DP step is Opacus per-sample gradients (in the trainer's ``grad_sample_mode``: ``auto`` is
the default, resolved to ``ew`` or ``ghost`` by size; ``hooks``, ``ew`` and ``ghost`` can be
listed to compare), flat per-sample clipping, Gaussian noise on every parameter (sigma = 1) and
the optimizer update; the non-private step is the same architecture and optimizer on a
hook-free copy. Cases: the heart-disease MLP (hidden (32,)) and a wide one (256, 256) at batch
32, and both at batch 128 (Cleveland has 228 training rows: 128 is a large share). Both run
on one fixed batch of real heart-disease rows (Cleveland), interleaved step by step
(alternating which goes first) so that background load hits both alike; medians after a
warm-up. The Poisson sampling is not in the step time; the whole-round times (``train`` vs
``train_non_private``, batch sampling included) are printed alongside. The summary
(``median_ratio``, ``max_ratio``, ``meets_goal``) is over the default (``auto``) rows;
``by_mode`` has the median ratios per mode.

Threads default to 1: these are tiny operations, intra-op threads only add synchronisation, and
on a shared 2-core machine they make timings erratic. ``ratio`` is the ratio of wall-time medians
(the goal's measure); ``cpu_ratio`` the ratio of thread-CPU-time medians, which background load
on a shared machine does not inflate (with one thread the whole step runs on the calling thread).
Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from client_node.trainer.dp_sgd import DPTrainer, GradSampleMode
from lepton_fl.datasets import load_partition
from lepton_fl.models import ModelSpec, build_model

GOAL = 1.25
BATCH_SIZE = 32
LARGE_BATCH_SIZE = 128
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
ROUND_EPOCHS = 5
HIDDEN_SIZES: tuple[tuple[int, ...], ...] = ((32,), (256, 256))
CASES: tuple[tuple[tuple[int, ...], int], ...] = tuple(
    (hidden, batch) for batch in (BATCH_SIZE, LARGE_BATCH_SIZE) for hidden in HIDDEN_SIZES
)
MODES: tuple[GradSampleMode, ...] = ("auto", "hooks", "ew", "ghost")


@dataclass(frozen=True)
class Row:
    """Timings of one model, batch size and grad-sample mode."""

    model: str
    hidden: list[int]
    params: int
    batch_size: int
    mode: str
    resolved_mode: str
    plain_step_us: float
    dp_step_us: float
    ratio: float
    cpu_ratio: float
    plain_round_s: float
    dp_round_s: float


def _time_pair(
    first: Callable[[], object], second: Callable[[], object], *, steps: int, warmup: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Interleaved wall and thread-CPU timings of two callables (alternating order)."""
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    fns = (first, second)
    for i in range(warmup + steps):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            w0, c0 = time.perf_counter(), time.thread_time()
            fns[k]()
            c1, w1 = time.thread_time(), time.perf_counter()
            if i >= warmup:
                wall[k].append(w1 - w0)
                cpu[k].append(c1 - c0)
    return wall[0], wall[1], cpu[0], cpu[1]


def measure(
    hidden: tuple[int, ...], *, batch_size: int, mode: GradSampleMode, steps: int, warmup: int
) -> Row:
    """Time the DP and the non-private step of the trainer for one MLP size, batch and mode."""
    split = load_partition("heart_disease", "cleveland", seed=0)
    model = build_model(
        ModelSpec(hidden=hidden), num_features=split.num_features, num_classes=2, seed=0
    )
    trainer = DPTrainer(
        model=model,
        x=split.x_train,
        y=split.y_train,
        batch_size=batch_size,
        learning_rate=0.05,
        max_grad_norm=MAX_GRAD_NORM,
        device=torch.device("cpu"),
        seed=0,
        reproducible_noise=True,
        grad_sample_mode=mode,
    )
    # Whole rounds first (they also set the noise multiplier and warm both paths up).
    dp_round = trainer.train(epochs=ROUND_EPOCHS, noise_multiplier=NOISE_MULTIPLIER)
    plain_round = trainer.train_non_private(epochs=ROUND_EPOCHS)
    xb = torch.as_tensor(split.x_train[:batch_size])
    yb = torch.as_tensor(split.y_train[:batch_size])
    # The trainer's own step functions, on the same batch (private API, used on purpose).
    plain_wall, dp_wall, plain_cpu, dp_cpu = _time_pair(
        lambda: trainer._plain_step(xb, yb),
        lambda: trainer._dp_step(xb, yb),
        steps=steps,
        warmup=warmup,
    )
    plain_us = statistics.median(plain_wall) * 1e6
    dp_us = statistics.median(dp_wall) * 1e6
    return Row(
        model="tabular_mlp",
        hidden=list(hidden),
        params=sum(p.numel() for p in trainer.model.parameters()),
        batch_size=batch_size,
        mode=mode,
        resolved_mode=trainer.grad_sample_mode,
        plain_step_us=round(plain_us, 1),
        dp_step_us=round(dp_us, 1),
        ratio=round(dp_us / plain_us, 3),
        cpu_ratio=round(statistics.median(dp_cpu) / statistics.median(plain_cpu), 3),
        plain_round_s=round(plain_round.seconds, 4),
        dp_round_s=round(dp_round.seconds, 4),
    )


def main() -> None:
    """Measure every size, print the table and the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated grad_sample_mode values to time ('auto' is always included)",
    )
    args = parser.parse_args()
    modes: list[GradSampleMode] = ["auto"]
    for name in args.modes.split(","):
        if name not in MODES:
            parser.error(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
        if name not in modes:
            modes.append(name)  # checked against MODES just above
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    rows = [
        measure(h, batch_size=b, mode=m, steps=args.steps, warmup=args.warmup)
        for h, b in CASES
        for m in modes
    ]
    print(
        f"DP-SGD overhead: batch {BATCH_SIZE} and {LARGE_BATCH_SIZE}, sigma {NOISE_MULTIPLIER}, "
        f"C {MAX_GRAD_NORM}, "
        f"median of {args.steps} steps after {args.warmup} warm-up, "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    header = (
        f"{'model':<24}{'params':>8}{'batch':>7}{'mode':>12}"
        f"{'plain us':>11}{'DP us':>11}{'DP/plain':>10}"
        f"{'cpu ratio':>11}{'round plain s':>15}{'round DP s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        name = f"{r.model} {tuple(r.hidden)}"
        mode = f"{r.mode}->{r.resolved_mode}" if r.mode == "auto" else r.mode
        print(
            f"{name:<24}{r.params:>8}{r.batch_size:>7}{mode:>12}"
            f"{r.plain_step_us:>11.0f}{r.dp_step_us:>11.0f}"
            f"{r.ratio:>9.2f}x{r.cpu_ratio:>10.2f}x{r.plain_round_s:>15.3f}{r.dp_round_s:>12.3f}"
        )
    default_rows = [r for r in rows if r.mode == "auto"]
    median_ratio = statistics.median(r.ratio for r in default_rows)
    median_cpu_ratio = statistics.median(r.cpu_ratio for r in default_rows)
    by_mode = {
        m: {
            "median_ratio": round(statistics.median(r.ratio for r in rows if r.mode == m), 3),
            "median_cpu_ratio": round(
                statistics.median(r.cpu_ratio for r in rows if r.mode == m), 3
            ),
        }
        for m in modes
    }
    for m, medians in by_mode.items():
        print(
            f"{m:>6}: median wall ratio {medians['median_ratio']:.2f}x, "
            f"median CPU ratio {medians['median_cpu_ratio']:.2f}x"
        )
    print(
        f"goal <= {GOAL}x (default mode): {'met' if median_ratio <= GOAL else 'NOT met'} "
        f"(median wall ratio {median_ratio:.2f}x, median CPU ratio {median_cpu_ratio:.2f}x)"
    )
    summary = {
        "bench": "dp_overhead",
        "batch_size": BATCH_SIZE,
        "batch_sizes": [BATCH_SIZE, LARGE_BATCH_SIZE],
        "modes": modes,
        "steps": args.steps,
        "threads": args.threads,
        "rows": [asdict(r) for r in rows],
        "goal": GOAL,
        "median_ratio": round(median_ratio, 3),
        "median_cpu_ratio": round(median_cpu_ratio, 3),
        "max_ratio": max(r.ratio for r in default_rows),
        "meets_goal": median_ratio <= GOAL,
        "by_mode": by_mode,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
