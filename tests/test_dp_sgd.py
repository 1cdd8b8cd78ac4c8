"""The node's DP-SGD trainer and evaluation, on real data with real Opacus (no mocks)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from client_node.trainer.dp_sgd import DPTrainer, TrainResult, resolve_device
from client_node.trainer.evaluation import evaluate
from lepton_fl.datasets import TabularSplit, load_partition
from lepton_fl.models import ModelSpec, build_model, get_weights, set_weights, weights_digest

CPU = torch.device("cpu")
BATCH = 16
LR = 0.3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split() -> TabularSplit:
    return load_partition("breast_cancer", "site-0-of-3", seed=0)


def _trainer(split: TabularSplit, *, seed: int = 0, **kwargs: object) -> DPTrainer:
    model = build_model(ModelSpec(), num_features=split.num_features, num_classes=2, seed=seed)
    options: dict[str, object] = {
        "batch_size": BATCH,
        "learning_rate": LR,
        "max_grad_norm": 1.0,
        "device": CPU,
        "seed": seed,
        "reproducible_noise": True,
        **kwargs,
    }
    return DPTrainer(model=model, x=split.x_train, y=split.y_train, **options)  # type: ignore[arg-type]


def _flat(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([w.ravel() for w in get_weights(model)])


def test_dp_training_improves_accuracy(split: TabularSplit) -> None:
    trainer = _trainer(split)
    before = evaluate(trainer.model, split.x_test, split.y_test, device=CPU)
    result = trainer.train(epochs=10, noise_multiplier=0.8)
    after = evaluate(trainer.model, split.x_test, split.y_test, device=CPU)
    assert after.accuracy >= 0.8
    assert after.accuracy > before.accuracy + 0.1
    assert after.roc_auc is not None
    assert after.roc_auc > 0.9
    assert after.loss < before.loss
    assert after.num_examples == len(split.y_test)
    assert isinstance(result, TrainResult)
    assert result.num_examples == len(split.y_train)
    assert result.noise_multiplier == 0.8
    assert result.max_grad_norm == 1.0
    assert math.isfinite(result.train_loss)
    assert result.seconds > 0


def test_steps_equal_optimizer_steps(split: TabularSplit) -> None:
    trainer = _trainer(split)
    n = len(split.y_train)
    assert trainer.sample_rate == BATCH / n
    assert trainer.steps_per_epoch() == int(1 / (BATCH / n)) == n // BATCH
    calls = []
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    try:
        result = trainer.train(epochs=3, noise_multiplier=1.0)
    finally:
        handle.remove()
    assert result.steps == len(calls) == 3 * trainer.steps_per_epoch()
    assert result.sample_rate == trainer.sample_rate


def test_a_public_population_sets_the_rate_and_the_steps(split: TabularSplit) -> None:
    """Sampling over a public bound B >= n (a node's size bucket under secure aggregation):
    q = batch / B and int(1 / q) steps per epoch, the same for any n up to B, and the steps
    taken are those counted."""
    n = len(split.y_train)
    bucket = 1 << (n - 1).bit_length()
    assert bucket > n
    trainer = _trainer(split, population=bucket)
    assert trainer.population == bucket
    assert trainer.sample_rate == BATCH / bucket
    assert trainer.steps_per_epoch() == bucket // BATCH
    model = build_model(ModelSpec(), num_features=split.num_features, num_classes=2, seed=0)
    fewer = DPTrainer(
        model=model,
        x=split.x_train[:-5],
        y=split.y_train[:-5],
        batch_size=BATCH,
        learning_rate=LR,
        max_grad_norm=1.0,
        device=CPU,
        seed=0,
        population=bucket,
    )
    assert (fewer.sample_rate, fewer.steps_per_epoch()) == (
        trainer.sample_rate,
        trainer.steps_per_epoch(),
    )
    calls = []
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    try:
        result = trainer.train(epochs=2, noise_multiplier=1.0)
    finally:
        handle.remove()
    assert result.steps == len(calls) == 2 * (bucket // BATCH)
    assert result.sample_rate == BATCH / bucket
    with pytest.raises(ValueError, match="population"):
        _trainer(split, population=n - 1)


def test_set_weights_between_rounds_takes_effect(split: TabularSplit) -> None:
    trainer = _trainer(split)
    trainer.train(epochs=1, noise_multiplier=1.0)
    shifted = [w + 5.0 for w in get_weights(trainer.model)]  # far from anything trained
    set_weights(trainer.model, shifted)
    assert weights_digest(get_weights(trainer.model)) == weights_digest(shifted)
    trainer.train(epochs=1, noise_multiplier=1.0)
    moved = _flat(trainer.model) - np.concatenate([w.ravel() for w in shifted])
    assert np.abs(moved).max() > 0  # the wrapped optimizer updated these very tensors
    assert np.abs(moved).max() < 2.0  # ...starting from the weights that were set


def test_noise_multiplier_can_change_per_round(split: TabularSplit) -> None:
    trainer = _trainer(split)
    low = trainer.train(epochs=1, noise_multiplier=0.5)
    high = trainer.train(epochs=2, noise_multiplier=50.0)  # must not crash
    assert (low.noise_multiplier, high.noise_multiplier) == (0.5, 50.0)
    assert high.steps == 2 * trainer.steps_per_epoch()
    assert math.isfinite(high.train_loss)
    assert np.isfinite(_flat(trainer.model)).all()


def test_non_private_path(split: TabularSplit) -> None:
    trainer = _trainer(split)
    start = weights_digest(get_weights(trainer.model))
    result = trainer.train_non_private(epochs=5)
    assert result.noise_multiplier == 0.0
    assert result.steps == 5 * math.ceil(len(split.y_train) / BATCH)
    assert weights_digest(get_weights(trainer.model)) != start  # copied back into the model
    assert evaluate(trainer.model, split.x_test, split.y_test, device=CPU).accuracy >= 0.9
    # DP training continues from the non-private result.
    trainer.train(epochs=1, noise_multiplier=1.0)


def test_reproducible_only_when_asked(split: TabularSplit) -> None:
    runs = []
    for _ in range(2):
        trainer = _trainer(split, seed=5)
        trainer.train(epochs=1, noise_multiplier=1.0)
        runs.append(_flat(trainer.model))
    np.testing.assert_array_equal(runs[0], runs[1])
    secret = []
    for _ in range(2):
        trainer = _trainer(split, seed=5, reproducible_noise=False)
        trainer.train(epochs=1, noise_multiplier=1.0)
        secret.append(_flat(trainer.model))
    assert not np.array_equal(secret[0], secret[1])  # noise/sampling not derivable from seed


def test_adam_option_trains(split: TabularSplit) -> None:
    trainer = _trainer(split, optimizer="adam", learning_rate=0.01)
    before = evaluate(trainer.model, split.x_test, split.y_test, device=CPU)
    trainer.train(epochs=3, noise_multiplier=0.8)
    after = evaluate(trainer.model, split.x_test, split.y_test, device=CPU)
    assert before.roc_auc is not None
    assert after.roc_auc is not None
    assert after.roc_auc > max(0.9, before.roc_auc)


def test_invalid_arguments(split: TabularSplit) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _trainer(split, batch_size=len(split.y_train) + 1)
    with pytest.raises(ValueError, match="max_grad_norm"):
        _trainer(split, max_grad_norm=0.0)
    trainer = _trainer(split)
    with pytest.raises(ValueError, match="noise_multiplier"):
        trainer.train(epochs=1, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="epochs"):
        trainer.train(epochs=0, noise_multiplier=1.0)
    batchnorm = torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="GroupNorm"):
        DPTrainer(
            model=batchnorm,
            x=split.x_train,
            y=split.y_train,
            batch_size=BATCH,
            learning_rate=LR,
            max_grad_norm=1.0,
            device=CPU,
            seed=0,
        )


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == CPU
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_evaluate_edge_cases(split: TabularSplit) -> None:
    model = build_model(ModelSpec(), num_features=split.num_features, num_classes=2, seed=0)
    model.train()
    only_ones = split.y_test == 1
    result = evaluate(model, split.x_test[only_ones], split.y_test[only_ones], device=CPU)
    assert result.roc_auc is None  # a single class present: AUC undefined
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, split.x_test, split.y_test + 2, device=CPU)
    # Multiclass: one-vs-rest macro AUC over the classes present.
    three = build_model(ModelSpec(hidden=()), num_features=2, num_classes=3, seed=0)
    with torch.no_grad():
        next(three.parameters()).copy_(torch.tensor([[-4.0, 0.0], [0.0, 0.0], [4.0, 0.0]]))
    x = np.array([[-1.0, 0.0], [-0.9, 0.1], [0.0, 0.0], [0.05, 0.0], [1.0, 0.0], [0.9, 0.0]])
    y = np.array([0, 0, 1, 1, 2, 2])
    multi = evaluate(three, x.astype(np.float32), y, device=CPU)
    assert multi.roc_auc == pytest.approx(1.0)
    assert multi.accuracy == pytest.approx(1.0)


MODES = ("hooks", "ew", "ghost")


def _clipped_sum_reference(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> torch.Tensor:
    """Sum of per-example gradients, each flat-clipped to ``max_grad_norm``: one backward each."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grad = torch.cat([p.grad.ravel() for p in model.parameters()]).double()  # type: ignore[union-attr]
        total += grad * min(1.0, max_grad_norm / (float(grad.norm()) + 1e-6))
    return total


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", [*MODES, "auto"])
def test_every_mode_clips_per_sample(split: TabularSplit, mode: str) -> None:
    """One step with (almost) no noise equals ``-lr * sum_i clip(g_i) / batch_size``.

    Row 0 is scaled up 1000x and given the wrong label, so its gradient is huge; every other
    row's gradient is also above ``C = 0.05``. Without per-sample clipping the update would be
    hundreds of times the bound ``lr * C * k / B`` that it must respect.
    """
    max_grad_norm = 0.05
    trainer = _trainer(split, max_grad_norm=max_grad_norm, grad_sample_mode=mode)
    trainer._dp_optimizer.noise_multiplier = 1e-12
    x = torch.as_tensor(split.x_train[:10]).clone()
    x[0] *= 1000.0
    y = torch.as_tensor(split.y_train[:10]).clone()
    y[0] = 1 - y[0]
    reference_model = build_model(
        ModelSpec(), num_features=split.num_features, num_classes=2, seed=0
    )
    expected = -LR * _clipped_sum_reference(reference_model, x, y, max_grad_norm) / BATCH
    before = torch.as_tensor(_flat(trainer.model), dtype=torch.float64)
    trainer._gsm.train()
    trainer._dp_step(x, y)
    update = torch.as_tensor(_flat(trainer.model), dtype=torch.float64) - before
    assert float(update.norm()) <= LR * max_grad_norm * len(y) / BATCH * (1 + 1e-5)
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_counts_steps_and_survives_empty_batches(split: TabularSplit, mode: str) -> None:
    """Tiny set, q = 1/4: many Poisson batches are empty; each is still one noisy step."""
    model = build_model(ModelSpec(), num_features=split.num_features, num_classes=2, seed=0)
    trainer = DPTrainer(
        model=model,
        x=split.x_train[:4],
        y=split.y_train[:4],
        batch_size=1,
        learning_rate=LR,
        max_grad_norm=1.0,
        device=CPU,
        seed=0,
        grad_sample_mode=mode,  # type: ignore[arg-type]
    )
    assert trainer.grad_sample_mode == mode
    assert trainer.sample_rate == 1 / 4
    sizes: list[int] = []
    calls = []
    original = trainer._dp_step
    trainer._dp_step = lambda xb, yb: sizes.append(len(yb)) or original(xb, yb)  # type: ignore[method-assign]
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    try:
        start = _flat(trainer.model)
        result = trainer.train(epochs=10, noise_multiplier=1.0)
    finally:
        handle.remove()
    assert result.steps == len(calls) == len(sizes) == 10 * trainer.steps_per_epoch() == 40
    assert 0 in sizes  # P(none of 40 empty) = (1 - 0.75**4) ** 40 ~ 3e-7
    assert np.isfinite(_flat(trainer.model)).all()
    assert not np.array_equal(_flat(trainer.model), start)


def test_grad_sample_mode_auto_and_validation(split: TabularSplit) -> None:
    assert _trainer(split).grad_sample_mode == "ew"  # 1,058 params x batch 16: small
    wide = build_model(
        ModelSpec(hidden=(256, 256)), num_features=split.num_features, num_classes=2, seed=0
    )
    big = DPTrainer(
        model=wide, x=split.x_train, y=split.y_train, batch_size=BATCH, learning_rate=LR,
        max_grad_norm=1.0, device=CPU, seed=0,
    )  # fmt: skip
    assert big.grad_sample_mode == "ghost"  # 74k params x 16 >= 2**19
    normed = torch.nn.Sequential(
        torch.nn.Linear(split.num_features, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 2)
    )
    other = DPTrainer(
        model=normed, x=split.x_train, y=split.y_train, batch_size=BATCH, learning_rate=LR,
        max_grad_norm=1.0, device=CPU, seed=0,
    )  # fmt: skip
    assert other.grad_sample_mode == "hooks"  # not all nn.Linear: the general-purpose mode
    with pytest.raises(ValueError, match="grad_sample_mode"):
        _trainer(split, grad_sample_mode="functorch")
