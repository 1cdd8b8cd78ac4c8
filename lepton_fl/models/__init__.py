"""Model registry and weight helpers shared by the coordinator and the nodes."""

from lepton_fl.models.registry import (
    ModelBuilder,
    ModelSpec,
    build_model,
    list_models,
    model_spec,
    register_model,
)
from lepton_fl.models.tabular_mlp import TabularMLP
from lepton_fl.models.tokenization import TextTokenizer, list_tokenizers, load_tokenizer
from lepton_fl.models.weights import (
    get_weights,
    set_weights,
    trainable_parameters,
    unwrap_model,
    weights_digest,
)

__all__ = [
    "ModelBuilder",
    "ModelSpec",
    "TabularMLP",
    "TextTokenizer",
    "build_model",
    "get_weights",
    "list_models",
    "list_tokenizers",
    "load_tokenizer",
    "model_spec",
    "register_model",
    "set_weights",
    "trainable_parameters",
    "unwrap_model",
    "weights_digest",
]
