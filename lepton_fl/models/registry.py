"""Model registry: a frozen :class:`ModelSpec` names an architecture; :func:`build_model` builds it.

Builds are deterministic for a seed (the global RNG is forked, not consumed) and every registered
architecture must pass ``opacus.validators.ModuleValidator.validate(model, strict=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lepton_fl.models.tabular_mlp import TabularMLP

__all__ = ["ModelBuilder", "ModelSpec", "build_model", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture to build, and its size."""

    name: str = "tabular_mlp"
    hidden: tuple[int, ...] = (32,)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)  # accept lists from JSON, store a tuple
        object.__setattr__(self, "hidden", hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be positive ints, got {hidden!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


ModelBuilder = Callable[[ModelSpec, int, int], nn.Module]
"""``(spec, num_features, num_classes) -> module``; called under a seeded RNG."""


def _build_tabular_mlp(spec: ModelSpec, num_features: int, num_classes: int) -> nn.Module:
    return TabularMLP(
        num_features=num_features,
        num_classes=num_classes,
        hidden=spec.hidden,
        dropout=spec.dropout,
    )


_REGISTRY: dict[str, ModelBuilder] = {"tabular_mlp": _build_tabular_mlp}


def register_model(name: str, builder: ModelBuilder) -> None:
    """Add an architecture; ``ValueError`` if ``name`` is taken."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder


def list_models() -> tuple[str, ...]:
    """Registered architecture names."""
    return tuple(sorted(_REGISTRY))


def build_model(spec: ModelSpec, *, num_features: int, num_classes: int, seed: int) -> nn.Module:
    """Build ``spec`` with weights drawn from ``seed`` (same seed, same weights), on the CPU.

    The global torch RNG is forked for the build, so callers' random state is untouched.
    """
    builder = _REGISTRY.get(spec.name)
    if builder is None:
        raise ValueError(f"unknown model {spec.name!r}; choose one of {list(list_models())}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(spec, num_features, num_classes)
