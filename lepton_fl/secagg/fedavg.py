"""Example-weighted FedAvg through SecAgg+: what a node masks and how the sum is read.

A node with ``n_i`` training examples that received the global model ``W`` and trained it to
``W_i`` masks the vector ``[w_i * (W_i - W) / scale, w_i]`` with ``w_i = n_i / n_max``, where
``n_max`` is a public bound on the active nodes' training-set sizes and ``scale`` the
round's update bound (both sent by the coordinator). The coordinator decodes the survivors'
sum ``[S, W_sum]`` and moves the model by ``scale * S / W_sum``: exactly the example-weighted
mean update of the nodes whose input entered the sum, whoever dropped out.

The coordinator never learns a node's exact ``n_i``: at setup a node advertises only its
size bucket (the smallest power of two >= ``n_i``, :func:`size_bucket`), and ``n_max`` is the
largest bucket of the round's active nodes. The example count travels inside the masked
vector; the coordinator learns the survivors' total, ``W_sum * n_max``, as FedAvg needs.
Since ``n_i <= n_max``, every element of a node's input stays in [-1, 1] as before, and the
largest node's weight is at least 1/2, so the fixed-point precision is that of ``n_i / N``
weights within a factor of two.

``scale`` follows from the DP clipping bound: one DP-SGD step moves the model by the
learning rate times a mean of per-example gradients each clipped to ``max_grad_norm`` (plus
noise), so ``learning_rate * max_grad_norm * steps`` bounds the noiseless part of a round's
update in L2, hence in every coordinate. ``update_headroom`` (default 2) leaves room for the
noise; a coordinate beyond the range is clipped and counted by the encoder, never wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lepton_fl.config import FederationSpec
from lepton_fl.secagg.config import SecAggConfig

Weights = Sequence[npt.NDArray[Any]]


def local_steps(fed: FederationSpec, num_examples: int) -> int:
    """DP-SGD steps a node with ``num_examples`` takes in one round (``int(1 / q)`` per epoch)."""
    batch = min(fed.training.batch_size, num_examples)
    return fed.training.local_epochs * max(1, num_examples // max(1, batch))


def size_bucket(num_examples: int) -> int:
    """The coarse, public size a node advertises: the smallest power of two >= its size."""
    if num_examples < 1:
        raise ValueError(f"A node needs at least 1 training example, not {num_examples}.")
    return 1 << (num_examples - 1).bit_length()


def update_scale(fed: FederationSpec, *, max_examples: int) -> float:
    """The round's fixed-point range for a participant with up to ``max_examples`` examples
    (the steps bound grows with the training-set size, so the largest bucket bounds all)."""
    steps = local_steps(fed, max_examples)
    bound = fed.training.learning_rate * fed.privacy.max_grad_norm * steps
    return fed.secure_aggregation.update_headroom * bound


def vector_length(shapes: Sequence[tuple[int, ...]]) -> int:
    """Elements of a node's input: every model parameter, plus its weight."""
    return sum(math.prod(s) for s in shapes) + 1


def encode_update(
    received: Weights, trained: Weights, *, num_examples: int, size_bound: int, scale: float
) -> npt.NDArray[np.float64]:
    """The node's input to the sum: ``[w * (trained - received) / scale, w]`` with
    ``w = num_examples / size_bound``."""
    if not 0 < num_examples <= size_bound:
        raise ValueError(
            f"The node trained on {num_examples} examples but the round's size bound is "
            f"{size_bound}; its weight would be clipped and the aggregate wrong."
        )
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"The update scale must be a positive finite number, got {scale}.")
    if [np.shape(a) for a in received] != [np.shape(b) for b in trained]:
        raise ValueError("The trained model's shapes differ from the model received.")
    weight = num_examples / size_bound
    parts = [
        (np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)).ravel()
        for a, b in zip(received, trained, strict=True)
    ]
    return np.concatenate([*parts, [scale]]) * (weight / scale)


def apply_sum(
    model: Weights, total: npt.NDArray[np.float64], *, scale: float
) -> tuple[list[npt.NDArray[Any]], float]:
    """The new global model from the decoded sum, and the survivors' weight sum (their
    example total in units of the round's size bound)."""
    weight_sum = float(total[-1])
    if not weight_sum > 0:
        raise ValueError("The aggregate carries no weight: no update entered the sum.")
    mean = total[:-1] * (scale / weight_sum)
    updated: list[npt.NDArray[Any]] = []
    offset = 0
    for array in model:
        size = int(np.size(array))
        step = mean[offset : offset + size].reshape(np.shape(array))
        updated.append((np.asarray(array, dtype=np.float64) + step).astype(np.asarray(array).dtype))
        offset += size
    if offset != total.size - 1:
        raise ValueError(
            f"The aggregate has {total.size - 1} parameters but the model has {offset}."
        )
    return updated, weight_sum


def mean_error_bound(sum_error: float, weight_sum: float) -> float:
    """Bound on |S/W_sum - exact|, in units of the update scale, from the per-coordinate error
    ``e`` of the decoded ``S`` and ``W_sum``: every input lies in [-1, 1] times its weight, so
    |S / W_sum| <= 1 and |S/W - S'/W'| <= (|dS| + |S/W| |dW|) / W' <= 2e / (W_sum - e)."""
    if weight_sum <= sum_error:
        return math.inf
    return 2 * sum_error / (weight_sum - sum_error)


def session_config(fed: FederationSpec, *, first_round: int) -> SecAggConfig:
    """The SecAgg+ settings of a session starting at federation round ``first_round``.

    Both halves derive it from the federation spec alone, so a node refuses a session whose
    parameters differ from its own derivation. Values are in units of the round's update
    scale, so the library's range is [-1, 1].
    """
    spec = fed.secure_aggregation
    remaining = fed.rounds - first_round + 1
    if remaining < 1:
        raise ValueError(f"Round {first_round} is past the run's last round {fed.rounds}.")
    rounds = min(remaining, spec.session_rounds or remaining)
    return SecAggConfig(
        threshold=spec.threshold,
        neighbours=spec.neighbours,
        clipping_range=1.0,
        modulus_bits=spec.modulus_bits,
        min_participants=max(3, fed.min_participants),
        session_rounds=rounds,
        dropout_recovery=spec.dropout_recovery,
    )
