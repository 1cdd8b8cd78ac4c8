"""FedAvg over SecAgg+: the initial model, the update encoding, the session settings."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec, SecureAggregationSpec
from lepton_fl.model_init import initial_weights, task_dimensions, weight_shapes
from lepton_fl.models import ModelSpec, build_model, get_weights
from lepton_fl.secagg import SecAggConfig
from lepton_fl.secagg.fedavg import (
    apply_sum,
    encode_update,
    local_steps,
    mean_error_bound,
    session_config,
    size_bucket,
    update_scale,
    vector_length,
)
from lepton_fl.secagg.simulate import run_local_session
from lepton_fl.wire import WireError
from lepton_fl.wire.secagg import (
    put_round_weighting,
    put_size_bucket,
    round_weighting_from,
    size_bucket_from,
)

FED = FederationSpec(
    name="f", task="heart_disease", rounds=5, privacy=PrivacySpec(target_epsilon=3.0)
)


@pytest.mark.parametrize("hidden", [(), (32,), (16, 8)])
@pytest.mark.parametrize("task", ["heart_disease", "breast_cancer"])
def test_initial_model_has_the_nodes_model_shapes(hidden: tuple[int, ...], task: str) -> None:
    fed = FED.model_copy(update={"task": task, "model": ModelConfig(hidden=hidden)})
    features, classes = task_dimensions(task)
    torch_model = build_model(
        ModelSpec(name="tabular_mlp", hidden=hidden, dropout=0.0),
        num_features=features,
        num_classes=classes,
        seed=0,
    )
    want = [w.shape for w in get_weights(torch_model)]
    assert [w.shape for w in initial_weights(fed)] == want
    assert weight_shapes(fed.model, num_features=features, num_classes=classes) == want


def test_initial_model_is_a_function_of_the_spec() -> None:
    a, b = initial_weights(FED), initial_weights(FED)
    c = initial_weights(FED.model_copy(update={"seed": 1}))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    fan_in = a[0].shape[1]
    assert np.abs(a[0]).max() <= 1 / np.sqrt(fan_in)


def test_update_scale_follows_the_dp_clipping_bound() -> None:
    steps = local_steps(FED, 240)
    assert steps == FED.training.local_epochs * (240 // FED.training.batch_size)
    bound = FED.training.learning_rate * FED.privacy.max_grad_norm * steps
    assert update_scale(FED, max_examples=240) == pytest.approx(2.0 * bound)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 500), min_size=3, max_size=6),
    length=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_secure_weighted_average_equals_plain_fedavg(
    sizes: list[int], length: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    model = [
        rng.normal(size=(length,)).astype(np.float32),
        rng.normal(size=(2,)).astype(np.float32),
    ]
    trained = [
        [w + rng.uniform(-0.5, 0.5, size=w.shape).astype(np.float32) for w in model] for _ in sizes
    ]
    total, scale = sum(sizes), 1.0
    bound = max(size_bucket(n) for n in sizes)  # all the coordinator knows of the sizes
    ids = list(range(10, 10 + len(sizes)))
    vectors = {
        i: encode_update(model, t, num_examples=n, size_bound=bound, scale=scale)
        for i, n, t in zip(ids, sizes, trained, strict=True)
    }
    session = run_local_session(SecAggConfig(), [vectors])
    assert session.error is None
    result = session.results[0]
    updated, weight_sum = apply_sum(model, result.values, scale=scale)
    assert weight_sum * bound == pytest.approx(total, abs=1e-3)  # the total, securely
    assert weight_sum >= 0.5  # the largest node's weight: precision as with n_i / N weights
    error = mean_error_bound(result.error_bound, weight_sum) * scale
    assert error < 1e-7
    for index, base in enumerate(model):
        plain = base.astype(np.float64) + sum(
            (t[index].astype(np.float64) - base) * n / total
            for n, t in zip(sizes, trained, strict=True)
        )
        np.testing.assert_allclose(updated[index], plain, atol=error + 1e-6)


def test_an_update_beyond_the_range_is_clipped_and_counted_not_wrapped() -> None:
    model = [np.zeros(4, dtype=np.float32)]
    big = [np.array([5.0, -5.0, 0.5, 0.0], dtype=np.float32)]
    small = [np.array([0.1, 0.1, 0.1, 0.1], dtype=np.float32)]
    vectors = {
        i: encode_update(model, t, num_examples=1, size_bound=3, scale=1.0)
        for i, t in zip((1, 2, 3), (big, small, small), strict=True)
    }
    result = run_local_session(SecAggConfig(), [vectors]).results[0]
    assert result.clipped_total == 2
    updated, _ = apply_sum(model, result.values, scale=1.0)
    # 5 and -5 clip to +-3 (= scale / weight); nothing wraps to the other sign
    np.testing.assert_allclose(
        updated[0], [(3 + 0.2) / 3, (-3 + 0.2) / 3, 0.7 / 3, 0.2 / 3], atol=1e-6
    )


def test_encode_refuses_inconsistent_weights_and_shapes() -> None:
    model = [np.zeros(3, dtype=np.float32)]
    with pytest.raises(ValueError, match="size bound"):
        encode_update(model, model, num_examples=5, size_bound=4, scale=1.0)
    with pytest.raises(ValueError, match="shapes"):
        encode_update(model, [np.zeros(2)], num_examples=1, size_bound=4, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        encode_update(model, model, num_examples=1, size_bound=4, scale=float("nan"))
    with pytest.raises(ValueError, match="parameters"):
        apply_sum(model, np.ones(6), scale=1.0)


def test_session_config_is_derived_from_the_spec_alone() -> None:
    spec = FED.model_copy(
        update={"secure_aggregation": SecureAggregationSpec(threshold=3, session_rounds=2)}
    )
    config = session_config(spec, first_round=1)
    assert (config.threshold, config.session_rounds, config.min_participants) == (3, 2, 3)
    assert session_config(spec, first_round=5).session_rounds == 1  # the run's last round
    assert session_config(FED, first_round=2).session_rounds == 4  # default: rest of the run
    assert vector_length([(3, 2), (3,)]) == 10


def test_secure_aggregation_needs_three_participants() -> None:
    with pytest.raises(ValueError, match="at least 3 participants"):
        FederationSpec(
            name="f", task="t", min_participants=2, privacy=PrivacySpec(target_epsilon=1.0)
        )
    plain = FederationSpec(
        name="f",
        task="t",
        min_participants=2,
        privacy=PrivacySpec(target_epsilon=1.0),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    assert plain.min_participants == 2


def test_size_buckets_are_coarse_powers_of_two() -> None:
    assert [size_bucket(n) for n in (1, 2, 3, 4, 5, 142, 256, 257)] == [
        1, 2, 4, 4, 8, 256, 256, 512
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        size_bucket(0)


def test_round_weighting_and_size_buckets_are_checked_on_the_wire() -> None:
    records = RecordDict()
    put_round_weighting(records, size_bound=128, update_scale=0.5)
    assert round_weighting_from(records) == (128, 0.5)
    put_round_weighting(records, size_bound=0, update_scale=0.5)
    with pytest.raises(WireError, match="positive"):
        round_weighting_from(records)
    put_size_bucket(records, 8)
    assert size_bucket_from(records) == 8
    for bad in (0, 7, -8):
        put_size_bucket(records, bad)
        with pytest.raises(WireError, match="power of two"):
            size_bucket_from(records)
    with pytest.raises(WireError, match="missing"):
        size_bucket_from(RecordDict())
