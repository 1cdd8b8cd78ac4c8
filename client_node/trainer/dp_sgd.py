"""The node's DP-SGD training loop (Opacus, Poisson sampling), built once and reused every round.

Privacy mechanics, per step: every example of the local data set is included independently with
probability ``q = batch_size / n`` (Poisson sampling, the sampler of Opacus ``DPDataLoader``);
each example's gradient is clipped to L2 norm ``max_grad_norm`` (flat clipping over all
parameters, factor ``min(1, C / (norm + 1e-6))``), the clipped sum gets Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` and is divided by the expected batch size
``q * n = batch_size``. All of that is Opacus's code; ``grad_sample_mode`` only picks how Opacus
gets the per-sample norms (see :data:`GradSampleMode`). An epoch is ``len(DPDataLoader)`` steps
(``int(1 / q)``, i.e. ``floor(n / batch_size)`` up to floating point), a fixed number even though
batch sizes vary. Accounting is not done here: the node's ledger charges
``(sample_rate, noise_multiplier, steps)`` from :class:`TrainResult`.

Why the Opacus objects are built directly instead of through
``PrivacyEngine.make_private(..., poisson_sampling=True)``: ``make_private`` derives the sampling
rate from the length of a plain loader (``1 / ceil(n / batch_size)``, not ``batch_size / n``) and
truncates the expected batch size to an int; building the grad-sample module, the DP optimizer
(and, in ghost mode, the DP loss) and ``DPDataLoader`` ourselves (exactly what ``make_private``
builds for the mode) makes ``sample_rate`` and the step count exactly those the ledger is told. It
also avoids attaching an accountant we do not use. Batches are drawn by iterating the
``DPDataLoader``'s own Poisson batch sampler and indexing the in-memory tensors (what its
collate does, minus a per-example Python fetch): the same sampler, generator and batch sizes.

Randomness: ``secure_mode`` stays False (it needs ``torchcsprng``, which cannot be installed
here), so sampling and noise come from torch's Mersenne Twister. By default those two generators
are seeded from the OS (``os.urandom``), *not* from ``seed``: a seed taken from a federation's
configuration is known to the coordinator, which could otherwise regenerate the noise and strip
it. ``reproducible_noise=True`` derives them from ``seed`` as well: for tests and benchmarks only.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import (
    AbstractGradSampleModule,
    GradSampleModule,
    GradSampleModuleExpandedWeights,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client_node.trainer.inputs import as_tensor, model_inputs

__all__ = [
    "DPTrainer",
    "GradSampleMode",
    "OptimizerName",
    "TrainResult",
    "model_inputs",
    "resolve_device",
]

OptimizerName = Literal["sgd", "adam"]

GradSampleMode = Literal["auto", "hooks", "ew", "ghost"]
"""How Opacus obtains per-sample gradient norms; clipping and noise are Opacus's in every mode.

``"hooks"``: ``GradSampleModule`` materialises per-sample gradients with forward/backward hooks;
``DPOptimizer`` clips and sums them. ``"ew"``: the same, but the per-sample gradients come from
torch's ExpandedWeights inside autograd (``GradSampleModuleExpandedWeights``): fewer Python hooks,
measurably faster on small models. ``"ghost"``: ghost clipping
(``GradSampleModuleFastGradientClipping`` + ``DPOptimizerFastGradientClipping`` +
``DPLossFastGradientClipping``): per-sample gradient *norms* from activations and backprops
without materialising per-sample gradients, then a second backward pass on the per-sample losses
weighted by the clipping factors, which yields the same clipped sum; a fixed extra cost (two
backward passes) but no ``batch x params`` tensors, so it wins on larger models and batches.
``"auto"``: for models whose only parameterised layers are ``nn.Linear``, ``"ew"`` when
``batch_size * params < 2**19`` and ``"ghost"`` above (crossover measured with
``bench/dp_overhead.py``); ``"hooks"`` for any other model (the general-purpose mode).
"""

# batch_size * trainable parameters from which "auto" prefers ghost clipping to ExpandedWeights.
_GHOST_MIN_ELEMENTS = 1 << 19

# Opacus's backward hooks fire on module outputs because the inputs do not require gradients;
# torch warns about it once. Expected and harmless here.
_BACKWARD_HOOK_WARNING = "Full backward hook is firing when gradients are computed"


@dataclass(frozen=True)
class TrainResult:
    """What one call to :meth:`DPTrainer.train` (or ``train_non_private``) did.

    ``num_examples`` is the size of the local training set (the FedAvg weight), ``steps`` the
    optimizer steps actually taken, ``train_loss`` the mean per-example loss over all the round's
    batches, ``seconds`` the wall time of the training loop alone.
    """

    num_examples: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    train_loss: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``; ``"cuda"`` or ``"cuda:<i>"``.

    Raises ``ValueError`` for an unknown name or a CUDA device this machine does not have.
    """
    key = name.strip().lower()
    if key == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", key)
    if match is None:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested but CUDA is not available "
            f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}); "
            "use 'cpu' or 'auto'"
        )
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device(key)


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


_SEED_MASK = (1 << 63) - 1


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & _SEED_MASK


def _resolve_mode(
    mode: GradSampleMode, model: nn.Module, batch_size: int
) -> Literal["hooks", "ew", "ghost"]:
    if mode != "auto":
        return mode
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners or not all(type(m) is nn.Linear for m in owners):
        return "hooks"
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "ghost" if batch_size * params >= _GHOST_MIN_ELEMENTS else "ew"


def _training_arrays(
    inputs: Sequence[npt.NDArray[np.generic]] | None,
    labels: npt.NDArray[np.integer] | None,
    x: npt.NDArray[np.floating] | None,
    y: npt.NDArray[np.integer] | None,
) -> tuple[tuple[npt.NDArray[np.generic], ...], npt.NDArray[np.generic]]:
    if x is not None or y is not None:  # the older tabular spelling: x (n, d), y (n,)
        if inputs is not None or labels is not None or x is None or y is None:
            raise ValueError("give inputs= and labels=, or (tabular) x= and y=, not a mix")
        x_arr, y_arr = np.asarray(x), np.asarray(y)
        if x_arr.ndim != 2 or y_arr.ndim != 1 or len(x_arr) != len(y_arr):
            raise ValueError(f"x must be (n, d) and y (n,), got {x_arr.shape} and {y_arr.shape}")
        inputs, labels = (x_arr,), y_arr
    if inputs is None or labels is None:
        raise ValueError("DPTrainer needs the training inputs and labels")
    arrays, y_arr = model_inputs(inputs, labels)
    if len(y_arr) == 0:
        raise ValueError("the local training set is empty")
    if not np.issubdtype(y_arr.dtype, np.integer) or (y_arr.astype(np.int64) < 0).any():
        raise ValueError("labels must be non-negative integer class labels")
    return arrays, y_arr


def _epoch_batches(loader: DataLoader[tuple[torch.Tensor, ...]]) -> Iterator[list[int]]:
    """The index lists ``loader`` would fetch in one epoch, exactly, without fetching them.

    Iterating a ``DataLoader`` first draws a base seed (for workers) from ``loader.generator``,
    then runs its batch sampler on that same generator; the draw is repeated here so that the
    batches (Poisson for ``DPDataLoader``, shuffled for the plain loader) are the very ones the
    loader yields. The caller gathers the rows by index, which is what the loader's collate does.
    """
    batches = loader.batch_sampler
    if batches is None:  # pragma: no cover - both loaders here are built on a batch sampler
        raise RuntimeError("expected a data loader with a batch sampler")
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    yield from batches


class DPTrainer:
    """Owns one local dataset + model on one device; built ONCE and reused every round.

    Data of any modality: ``inputs`` holds one array per positional argument of the model, first
    axis the example (``Examples.inputs``: ``(features,)``, ``(pixels,)`` or the four token
    arrays of a text model), ``labels`` the integer classes; every batch gathers the same rows of
    each array and calls ``model(*batch)``. Float inputs become float32, integer inputs int64;
    only float inputs are checked for NaN. ``x=``/``y=`` remain as the tabular spelling of
    ``inputs=(x,)``/``labels=y``. Frozen parameters (``requires_grad=False``) are never updated.

    The Opacus wrappers (``GradSampleModule``, ``DPOptimizer``, ``DPDataLoader``) are made once in
    ``__init__`` and kept; between rounds the caller loads the global model with
    ``set_weights(trainer.model, weights)`` (in place, so the wrappers see it), and each
    :meth:`train` call may use a different noise multiplier. Optimizer state (Adam moments, if
    Adam is chosen) is reset at the start of every call: a round depends only on its start weights.

    ``population`` (default ``n``): the size the Poisson rate is computed from,
    ``q = batch_size / population``. A node inside secure aggregation passes its public size
    bucket (a power of two ``>= n``), so that ``q``, the steps per epoch (``int(1 / q)``) and
    hence the noise calibrated for them depend on the bucket only, never on the exact ``n``.
    Sampling really happens at that ``q`` (each of the ``n`` examples is drawn with probability
    ``q``; an epoch still visits ``n`` examples in expectation), so the ledger's
    ``(q, sigma, steps)`` is exactly what ran, not a bound. The gradient is still divided by
    ``batch_size``: the expected batch ``q * n`` would depend on ``n``.

    Optimizer: plain SGD (no momentum) by default. Measured on the heart-disease hospitals
    (tabular MLP, batch 32, C=1, 4 seeds): SGD at lr 0.3 matched or beat Adam at every setting
    tried (5 and 20 epochs, sigma 1 and 2), and Adam fell behind as noise grew (Hungary, 5 epochs,
    sigma 2: accuracy 0.84 with SGD, 0.64 with Adam at lr 0.01). Under DP, Adam divides each
    coordinate by a second-moment estimate dominated by the noise, so coordinates that carry only
    noise take full-size steps. SGD also keeps no state across rounds. ``optimizer="adam"`` is
    available; applying it to the privatised gradient is post-processing (same guarantee).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        inputs: Sequence[npt.NDArray[np.generic]] | None = None,
        labels: npt.NDArray[np.integer] | None = None,
        batch_size: int,
        learning_rate: float,
        max_grad_norm: float,
        device: torch.device,
        seed: int,
        optimizer: OptimizerName = "sgd",
        reproducible_noise: bool = False,
        grad_sample_mode: GradSampleMode = "auto",
        x: npt.NDArray[np.floating] | None = None,
        y: npt.NDArray[np.integer] | None = None,
        population: int | None = None,
    ) -> None:
        arrays, y_arr = _training_arrays(inputs, labels, x, y)
        n = len(y_arr)
        if population is None:
            population = n
        if not isinstance(population, int) or population < n:
            raise ValueError(
                f"population must be an int >= {n} (the number of local examples), "
                f"got {population!r}"
            )
        if not isinstance(batch_size, int) or not 1 <= batch_size <= population:
            raise ValueError(
                f"batch_size must be an int in [1, {population}] (the "
                f"{'number of local examples' if population == n else 'sampling population'}), "
                f"got {batch_size!r}"
            )
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        if grad_sample_mode not in get_args(GradSampleMode):
            raise ValueError(
                f"grad_sample_mode must be one of {list(get_args(GradSampleMode))}, "
                f"got {grad_sample_mode!r}"
            )
        self._lr = _positive("learning_rate", learning_rate)
        self._max_grad_norm = _positive("max_grad_norm", max_grad_norm)
        self._batch_size = batch_size
        self._n = n
        self._device = device
        self._seed = int(seed)
        self._optimizer_name: OptimizerName = optimizer
        self._calls = 0
        self._criterion = nn.CrossEntropyLoss()
        self._mode = _resolve_mode(grad_sample_mode, model, batch_size)

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError(
                "the model cannot be trained with DP-SGD: "
                + "; ".join(str(e) for e in errors)
                + " (replace BatchNorm by GroupNorm, or see opacus ModuleValidator.fix)"
            )
        model.to(device)
        # A hook-free twin for the non-private baseline: Opacus's hooks stay registered on the
        # wrapped module, so reusing it would slow the baseline down and flatter DP's overhead.
        self._plain_model = copy.deepcopy(model)
        self._plain_optimizer = self._make_optimizer(self._plain_model)

        # Kept on the training device: batches are gathered by index, no per-step copy.
        self._inputs = tuple(as_tensor(a).to(device) for a in arrays)
        self._labels = torch.as_tensor(y_arr, dtype=torch.int64).to(device)
        self._dataset = TensorDataset(*self._inputs, self._labels)

        sampling_seed = self._seed if reproducible_noise else _os_seed()
        noise_seed = self._seed + 1 if reproducible_noise else _os_seed()
        self._sampling_generator = torch.Generator().manual_seed(sampling_seed & _SEED_MASK)
        self._noise_generator = torch.Generator(device=device).manual_seed(noise_seed & _SEED_MASK)
        self._shuffle_generator = torch.Generator().manual_seed((self._seed + 2) & _SEED_MASK)

        self._population = population
        self._sample_rate = batch_size / population
        self._module = model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._gsm: AbstractGradSampleModule
        optimizer_class: type[DPOptimizer] = DPOptimizer
        if self._mode == "ghost":
            self._gsm = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="mean",
                strict=True,
                max_grad_norm=self._max_grad_norm,
                use_ghost_clipping=True,
            )
            optimizer_class = DPOptimizerFastGradientClipping
        elif self._mode == "ew":
            self._gsm = GradSampleModuleExpandedWeights(
                model, batch_first=True, loss_reduction="mean"
            )
        else:
            self._gsm = GradSampleModule(
                model, batch_first=True, loss_reduction="mean", strict=True
            )
            self._gsm.forbid_grad_accumulation()
        self._dp_optimizer = optimizer_class(
            self._make_optimizer(model),
            noise_multiplier=1.0,
            max_grad_norm=self._max_grad_norm,
            expected_batch_size=batch_size,
            loss_reduction="mean",
            generator=self._noise_generator,
            secure_mode=False,
        )
        self._dp_loss: DPLossFastGradientClipping | None = None
        if self._mode == "ghost":
            assert isinstance(self._gsm, GradSampleModuleFastGradientClipping)
            assert isinstance(self._dp_optimizer, DPOptimizerFastGradientClipping)
            # Its own criterion: the wrapper flips ``reduction`` to "none" while it runs.
            self._dp_loss = DPLossFastGradientClipping(
                self._gsm, self._dp_optimizer, nn.CrossEntropyLoss(), loss_reduction="mean"
            )
        self._dp_loader = DPDataLoader(
            self._dataset, sample_rate=self._sample_rate, generator=self._sampling_generator
        )
        self._plain_loader = DataLoader(
            self._dataset, batch_size=batch_size, shuffle=True, generator=self._shuffle_generator
        )

    def _make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        trainable = [p for p in module.parameters() if p.requires_grad]  # frozen parts stay
        if self._optimizer_name == "adam":
            return torch.optim.Adam(trainable, lr=self._lr)
        return torch.optim.SGD(trainable, lr=self._lr)

    @property
    def model(self) -> nn.Module:
        """The unwrapped module (load and read weights through it)."""
        return self._module

    @property
    def num_examples(self) -> int:
        """Size of the local training set."""
        return self._n

    @property
    def grad_sample_mode(self) -> Literal["hooks", "ew", "ghost"]:
        """The Opacus per-sample gradient mode in use (``"auto"`` resolved)."""
        return self._mode

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate ``q = batch_size / population`` (``population`` is ``n``
        unless the node samples as if it held a public upper bound of ``n``)."""
        return self._sample_rate

    @property
    def population(self) -> int:
        """The size the sampling rate is computed from: ``n``, or a public bound ``>= n``."""
        return self._population

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one DP epoch: exactly ``len(DPDataLoader)`` (``int(1 / q)``)."""
        return len(self._dp_loader)

    @contextmanager
    def _round_scope(self) -> Iterator[None]:
        """Seeded global RNG (dropout) for this call, restored afterwards; quiet Opacus hooks."""
        devices = [self._device.index or 0] if self._device.type == "cuda" else []
        self._calls += 1
        with warnings.catch_warnings(), torch.random.fork_rng(devices=devices):
            warnings.filterwarnings("ignore", message=_BACKWARD_HOOK_WARNING)
            torch.manual_seed((self._seed * 1_000_003 + self._calls) & _SEED_MASK)
            yield

    def _batch(self, idx: list[int]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The rows ``idx`` of every input and of the labels (what the loader's collate does)."""
        index = torch.as_tensor(idx, dtype=torch.int64, device=self._device)
        return tuple(a[index] for a in self._inputs), self._labels[index]

    def _dp_step(self, xb: tuple[torch.Tensor, ...] | torch.Tensor, yb: torch.Tensor) -> float:
        """One DP-SGD step on a Poisson batch; returns the batch's summed loss (0 if empty).

        Every call is exactly one ``optimizer.step()`` (clip, noise, update), empty batch included.
        """
        if isinstance(xb, torch.Tensor):  # one input (tabular features)
            xb = (xb,)
        optimizer = self._dp_optimizer
        optimizer.zero_grad(set_to_none=True)
        size = len(yb)
        if self._dp_loss is not None:  # ghost clipping: two backward passes inside backward()
            ghost_loss = self._dp_loss(self._gsm(*xb), yb)
            ghost_loss.backward()
            optimizer.step()
            return float(ghost_loss.detach()) * size if size else 0.0
        if size == 0:
            # ExpandedWeights rejects a batch of 0, and so do models that reshape by batch
            # (BERT's attention); hand the optimizer the empty per-sample gradients that hooks
            # mode produces for a plain model, so the step is noise only in every mode.
            for p in self._params:
                setattr(p, "grad_sample", p.new_zeros((0, *p.shape)))  # noqa: B010
            optimizer.step()
            return 0.0
        loss = self._criterion(self._gsm(*xb), yb)
        loss.backward()
        optimizer.step()
        return float(loss.detach()) * size if size else 0.0

    def _plain_step(self, xb: tuple[torch.Tensor, ...] | torch.Tensor, yb: torch.Tensor) -> float:
        """One ordinary minibatch step on the hook-free twin; returns the batch's summed loss."""
        if isinstance(xb, torch.Tensor):
            xb = (xb,)
        optimizer = self._plain_optimizer
        optimizer.zero_grad(set_to_none=True)
        loss = self._criterion(self._plain_model(*xb), yb)
        loss.backward()
        optimizer.step()
        return float(loss.detach()) * len(yb)

    def train(self, *, epochs: int, noise_multiplier: float) -> TrainResult:
        """Run ``epochs`` epochs of DP-SGD at ``noise_multiplier`` from the current weights."""
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        sigma = _positive("noise_multiplier", noise_multiplier)
        optimizer = self._dp_optimizer
        optimizer.noise_multiplier = sigma
        optimizer.original_optimizer.state.clear()
        self._gsm.train()
        steps, seen, loss_sum = 0, 0, 0.0
        with self._round_scope():
            start = time.perf_counter()
            for _ in range(epochs):
                for idx in _epoch_batches(self._dp_loader):  # Opacus's Poisson sampler
                    xb, yb = self._batch(idx)
                    loss_sum += self._dp_step(xb, yb)
                    seen += len(yb)
                    steps += 1
            seconds = time.perf_counter() - start
        expected = epochs * self.steps_per_epoch()
        if steps != expected:  # pragma: no cover - would mean Opacus changed its loader
            raise RuntimeError(f"took {steps} DP steps, expected {expected}")
        return TrainResult(
            num_examples=self._n,
            steps=steps,
            sample_rate=self._sample_rate,
            noise_multiplier=sigma,
            max_grad_norm=self._max_grad_norm,
            train_loss=loss_sum / seen if seen else float("nan"),
            seconds=seconds,
        )

    def train_non_private(self, *, epochs: int) -> TrainResult:
        """Same model and optimizer without DP (baseline, benchmarks): shuffled minibatches.

        Trains a hook-free copy of :attr:`model` from its current weights and copies the result
        back into :attr:`model`. The result has ``noise_multiplier=0.0``; ``sample_rate`` is the
        nominal ``batch_size / n`` and ``max_grad_norm`` the configured (unapplied) bound.
        Never report such a round as private.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        self._plain_model.load_state_dict(self._module.state_dict())
        self._plain_optimizer.state.clear()
        self._plain_model.train()
        steps, seen, loss_sum = 0, 0, 0.0
        with self._round_scope():
            start = time.perf_counter()
            for _ in range(epochs):
                for idx in _epoch_batches(self._plain_loader):
                    xb, yb = self._batch(idx)
                    loss_sum += self._plain_step(xb, yb)
                    seen += len(yb)
                    steps += 1
            seconds = time.perf_counter() - start
        self._module.load_state_dict(self._plain_model.state_dict())
        return TrainResult(
            num_examples=self._n,
            steps=steps,
            sample_rate=self._sample_rate,
            noise_multiplier=0.0,
            max_grad_norm=self._max_grad_norm,
            train_loss=loss_sum / seen,
            seconds=seconds,
        )
