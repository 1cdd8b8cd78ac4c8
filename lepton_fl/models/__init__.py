"""Model registry and weight helpers shared by the coordinator and the nodes."""

from lepton_fl.models.registry import (
    ModelBuilder,
    ModelSpec,
    build_model,
    list_models,
    register_model,
)
from lepton_fl.models.tabular_mlp import TabularMLP
from lepton_fl.models.weights import get_weights, set_weights, unwrap_model, weights_digest

__all__ = [
    "ModelBuilder",
    "ModelSpec",
    "TabularMLP",
    "build_model",
    "get_weights",
    "list_models",
    "register_model",
    "set_weights",
    "unwrap_model",
    "weights_digest",
]
