"""Model registry and weight helpers shared by the coordinator and the nodes.

The names below are imported on first use (PEP 562), so that the torch-free facts of
:mod:`lepton_fl.models.catalog`, :mod:`lepton_fl.models.spec` and
:mod:`lepton_fl.models.plans` can be read (by ``lepton_fl.config`` and the coordinator)
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lepton_fl.models.registry import ModelBuilder, build_model, list_models, register_model
    from lepton_fl.models.spec import ModelSpec, model_spec
    from lepton_fl.models.tabular_mlp import TabularMLP
    from lepton_fl.models.tokenization import TextTokenizer, list_tokenizers, load_tokenizer
    from lepton_fl.models.weights import (
        get_weights,
        set_weights,
        trainable_parameters,
        unwrap_model,
        weights_digest,
    )

_HOMES = {
    "ModelBuilder": "registry",
    "ModelSpec": "spec",
    "build_model": "registry",
    "list_models": "registry",
    "model_spec": "spec",
    "register_model": "registry",
    "TabularMLP": "tabular_mlp",
    "TextTokenizer": "tokenization",
    "list_tokenizers": "tokenization",
    "load_tokenizer": "tokenization",
    "get_weights": "weights",
    "set_weights": "weights",
    "trainable_parameters": "weights",
    "unwrap_model": "weights",
    "weights_digest": "weights",
}

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


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
