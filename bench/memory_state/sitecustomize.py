"""For `bench/round_overhead.py`'s ``ours-memory`` path only (this directory is on the
coordinator's PYTHONPATH there): the coordinator starts `flower-superlink` with Flower's
in-memory state (``--database :flwr-in-memory:``) instead of its SQLite file.

The product keeps the file: it holds the node registrations (the keys `flwr supernode
register` added and the node ids it returned), which a restarted coordinator needs. This
measures what the file costs per round.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_TARGET = "coordinator.superlink"
IN_MEMORY = ":flwr-in-memory:"  # flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME (1.42)


def _patch(module: ModuleType) -> None:
    original = module.SuperLink.command

    def command(self: Any) -> list[str]:
        argv: list[str] = original(self)
        argv[argv.index("--database") + 1] = IN_MEMORY
        return argv

    module.SuperLink.command = command


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


sys.meta_path.insert(0, _Finder())
