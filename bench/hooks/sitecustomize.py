"""Bench-only import hooks for the processes of `bench/round_overhead.py`'s clusters (this
directory is on their PYTHONPATH there); ``LEPTON_BENCH_HOOK`` picks one:

``stock_clientapp`` (the stock nodes): the ClientApp our bundle names, ``client_node.relay``,
    resolves to `stock_clientapp` beside this file. The coordinator accepts no bundle that
    ships code, and a Lepton node never loads one, so the stock path cannot get its ClientApp
    from the bundle. Every process of a stock node (`flower-supernode`, `flower-superexec`,
    each `flwr-clientapp`) finds the bench's module under the relay's name instead; what
    Flower does per message is unchanged: spawn `flwr-clientapp`, pull the task, install the
    bundle, import the ClientApp module, call it.
``file_state`` (the coordinator): `coordinator.superlink.SuperLink.command` starts
    `flower-superlink` with its state in a SQLite file (``superlink-state.db`` in the data
    directory) instead of Flower's in-memory state, to measure what the file would cost per
    round. The product keeps the state in memory and registers the node keys again at every
    start (`coordinator.runner`).
``polled_superlink`` (the coordinator): `coordinator.superlink.SuperLink.command` starts
    Flower's own `flower-superlink` instead of `coordinator.superlink_launcher`: every pull is
    answered at once and both sides poll, as before the long polls, to measure what they buy.
``unscoped_middleware`` (the coordinator's SuperLink process): `coordinator.superlink_launcher`
    leaves Flower's eight middleware layers on every request
    (`coordinator.superlink_middleware.scope_middlewares` does nothing), to measure what
    scoping them saves.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HOOK_ENV = "LEPTON_BENCH_HOOK"
_STOCK_CLIENTAPP = Path(__file__).with_name("stock_clientapp.py")


class _StockRelayFinder(importlib.abc.MetaPathFinder):
    """``client_node.relay`` is `stock_clientapp`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "client_node.relay":
            return None
        return importlib.util.spec_from_file_location(fullname, _STOCK_CLIENTAPP)


def _file_state(module: ModuleType) -> None:
    original = module.SuperLink.command

    def command(self: Any) -> list[str]:
        argv: list[str] = original(self)
        argv[argv.index("--database") + 1] = str(self.settings.data_dir / "superlink-state.db")
        return argv

    module.SuperLink.command = command


def _polled_superlink(module: ModuleType) -> None:
    original = module.SuperLink.command

    def command(self: Any) -> list[str]:
        argv: list[str] = original(self)
        launcher = argv.index("coordinator.superlink_launcher")
        return [module.executable("flower-superlink"), *argv[launcher + 1 :]]

    module.SuperLink.command = command


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self.inner = inner
        self.patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        self.patch(module)


def _unscoped_middleware(module: ModuleType) -> None:
    def keep_flowers(main: ModuleType, control: ModuleType) -> None:
        """Flower's eight middleware layers for every request, as `flower-superlink`."""

    module.scope_middlewares = keep_flowers  # type: ignore[attr-defined]


class _PatchedModuleFinder(importlib.abc.MetaPathFinder):
    """``name``, loaded as usual, then patched."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self.patch)
                return spec
        return None


_HOOKS: dict[str, importlib.abc.MetaPathFinder] = {
    "stock_clientapp": _StockRelayFinder(),
    "file_state": _PatchedModuleFinder("coordinator.superlink", _file_state),
    "polled_superlink": _PatchedModuleFinder("coordinator.superlink", _polled_superlink),
    "unscoped_middleware": _PatchedModuleFinder(
        "coordinator.superlink_middleware", _unscoped_middleware
    ),
}
_chosen = os.environ.get(HOOK_ENV)
if _chosen in _HOOKS:
    sys.meta_path.insert(0, _HOOKS[_chosen])
