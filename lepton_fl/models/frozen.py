"""Frozen feature maps with a per-row cache: the shared half of the ``*_embeddings`` and
``*_features`` models.

A :class:`FrozenEncoder` turns each example (one row of each input tensor) into a fixed feature
vector with a pretrained network that is never trained and is **not** a submodule of the model
that uses it: the model's parameters are its head's alone, so they are all that Opacus wraps,
clips per sample and noises, all that travels and all that the optimiser updates. A row's
features depend on that row only, so per-sample clipping of the head's gradient bounds each
example's influence exactly as for a tabular model, and the accounting is unchanged.

The network is loaded once per process, on the first forward pass (so the coordinator, which
only plans the head, never loads it), and shared by every copy of the model (``deepcopy``
returns the encoder itself). Features are cached in memory per row (a digest of the row's
bytes), so a node encodes each of its examples once, not once per epoch; the cache lives in the
process that holds the data (the node's trainer) and is never sent anywhere.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod

import torch
from torch import nn

__all__ = ["FrozenEncoder"]

_CACHE_LIMIT = 100_000  # rows; at most a few hundred MB of float32 features
_CHUNK = 64  # rows encoded per forward pass of the network


class FrozenEncoder(ABC):
    """A frozen network as a feature map: rows of inputs -> ``(n, width)`` float32 features.

    Subclasses give :meth:`_load` (the pretrained network), :meth:`_encode` (a chunk of rows,
    on CPU, to features) and the dtype each input is read as; this class loads and freezes the
    network once, caches, chunks and moves tensors between devices.
    """

    def __init__(self, width: int, dtypes: tuple[torch.dtype, ...]) -> None:
        self.width = width
        self._dtypes = dtypes
        self._net: nn.Module | None = None
        self._cache: dict[bytes, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenEncoder:
        return self  # frozen and stateless but for its cache: one per process

    @abstractmethod
    def _load(self) -> nn.Module:
        """The pretrained network, as shipped (called once, on the first encoding)."""

    def network(self, device: torch.device) -> nn.Module:
        """The network on ``device``: loaded on first use, in ``eval`` mode (no dropout;
        BatchNorm uses its stored statistics, never the batch's), without gradients."""
        if self._net is None:
            net = self._load()
            net.train(False)
            for parameter in net.parameters():
                parameter.requires_grad_(False)
            self._net = net
        if next(self._net.parameters()).device != device:
            self._net.to(device)
        return self._net

    @abstractmethod
    def _encode(self, rows: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        """Features of a chunk of rows (inputs on CPU, computed on ``device``), float32 on CPU."""

    @staticmethod
    def _key(rows: tuple[torch.Tensor, ...], index: int) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for row in rows:
            digest.update(row[index].numpy().tobytes())
        return digest.digest()

    def features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(n, width)`` float32 features on the inputs' device, without gradient."""
        if len(inputs) != len(self._dtypes):
            raise ValueError(f"expected {len(self._dtypes)} input tensors, got {len(inputs)}")
        device = inputs[0].device
        rows = tuple(
            t.detach().to("cpu", dtype).contiguous()
            for t, dtype in zip(inputs, self._dtypes, strict=True)
        )
        keys = [self._key(rows, i) for i in range(len(rows[0]))]
        if not keys:
            return torch.zeros((0, self.width), dtype=torch.float32, device=device)
        with self._lock, torch.no_grad():
            found = {key: self._cache[key] for key in keys if key in self._cache}
            first: dict[bytes, int] = {}
            for row, key in enumerate(keys):
                if key not in found:
                    first.setdefault(key, row)
            todo = list(first.values())
            for start in range(0, len(todo), _CHUNK):
                chunk = torch.as_tensor(todo[start : start + _CHUNK], dtype=torch.int64)
                encoded = self._encode(tuple(t[chunk] for t in rows), device)
                for row, vector in zip(chunk.tolist(), encoded, strict=True):
                    found[keys[row]] = vector
            if len(self._cache) + len(first) > _CACHE_LIMIT:
                self._cache.clear()
            self._cache.update((key, found[key]) for key in first)
            stacked = torch.stack([found[key] for key in keys])
        return stacked.to(device)
