"""Model registry and weight helpers: determinism, round trips, digests, Opacus compatibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator

from lepton_fl.models import (
    ModelSpec,
    build_model,
    get_weights,
    list_models,
    set_weights,
    unwrap_model,
    weights_digest,
)

SPEC = ModelSpec()


def _model(seed: int = 0, spec: ModelSpec = SPEC) -> torch.nn.Module:
    return build_model(spec, num_features=32, num_classes=2, seed=seed)


def test_registry_and_spec() -> None:
    assert "tabular_mlp" in list_models()
    assert ModelSpec(name="tabular_mlp", hidden=(32,), dropout=0.0) == SPEC
    assert ModelSpec(hidden=[8, 4]).hidden == (8, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model(ModelSpec(name="resnet"), num_features=3, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="hidden"):
        ModelSpec(hidden=(0,))
    with pytest.raises(ValueError, match="dropout"):
        ModelSpec(dropout=1.0)


def test_build_is_deterministic_per_seed_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = weights_digest(get_weights(_model(seed=7)))
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was not consumed
    assert weights_digest(get_weights(_model(seed=7))) == first
    assert weights_digest(get_weights(_model(seed=8))) != first


def test_shapes_and_order() -> None:
    model = _model(spec=ModelSpec(hidden=(16, 8)))
    shapes = [w.shape for w in get_weights(model)]
    assert shapes == [(16, 32), (16,), (8, 16), (8,), (2, 8), (2,)]
    assert all(w.dtype == np.float32 for w in get_weights(model))
    assert list(model(torch.zeros(5, 32)).shape) == [5, 2]
    logistic = _model(spec=ModelSpec(hidden=()))
    assert [w.shape for w in get_weights(logistic)] == [(2, 32), (2,)]


def test_get_set_roundtrip() -> None:
    source, target = _model(seed=1), _model(seed=2)
    weights = get_weights(source)
    set_weights(target, weights)
    assert weights_digest(get_weights(target)) == weights_digest(weights)
    x = torch.randn(4, 32)
    assert torch.equal(source(x), target(x))
    # get_weights returns copies: mutating them does not touch the model.
    weights[0][...] = 0.0
    assert weights_digest(get_weights(source)) != weights_digest(weights)


def test_set_weights_is_in_place() -> None:
    model = _model()
    params = [id(p) for p in model.parameters()]
    set_weights(model, [np.ones_like(w) for w in get_weights(model)])
    assert [id(p) for p in model.parameters()] == params
    assert all(float(p.detach().min()) == 1.0 for p in model.parameters())


def test_digest_changes_with_weights() -> None:
    weights = get_weights(_model())
    base = weights_digest(weights)
    changed = [w.copy() for w in weights]
    changed[1][0] += 1e-6
    assert weights_digest(changed) != base
    # Same bytes, different shapes or dtype: different digest.
    reshaped = [weights[0].reshape(-1), *weights[1:]]
    assert weights_digest(reshaped) != base
    as64 = [w.astype(np.float64) for w in weights]
    assert weights_digest(as64) != base
    assert len(base) == 64
    assert int(base, 16) >= 0


def test_wrong_count_or_shape_rejected() -> None:
    model = _model()
    weights = get_weights(model)
    before = weights_digest(get_weights(model))
    with pytest.raises(ValueError, match="expected 4 weight arrays"):
        set_weights(model, weights[:3])
    bad = [w.copy() for w in weights]
    bad[2] = np.zeros((3, 32), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'2\.weight': expected shape \(2, 32\)"):
        set_weights(model, bad)
    nan = [w.copy() for w in weights]
    nan[3][0] = np.nan
    with pytest.raises(ValueError, match=r"'2\.bias'.*NaN"):
        set_weights(model, nan)
    assert weights_digest(get_weights(model)) == before  # nothing was half-applied


@pytest.mark.parametrize(
    "spec", [SPEC, ModelSpec(hidden=()), ModelSpec(hidden=(64, 32), dropout=0.2)]
)
def test_models_are_opacus_compatible(spec: ModelSpec) -> None:
    model = _model(spec=spec)
    ModuleValidator.validate(model, strict=True)  # raises if not


def test_weights_through_opacus_wrapper() -> None:
    model = _model(seed=3)
    wrapped = GradSampleModule(model)
    assert any(k.startswith("_module.") for k in wrapped.state_dict())
    assert unwrap_model(wrapped) is model
    assert weights_digest(get_weights(wrapped)) == weights_digest(get_weights(model))
    fresh = get_weights(_model(seed=4))
    set_weights(wrapped, fresh)
    assert weights_digest(get_weights(model)) == weights_digest(fresh)
