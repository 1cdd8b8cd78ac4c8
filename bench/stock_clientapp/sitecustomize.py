"""For `bench/round_overhead.py`'s stock nodes only (this directory is on their PYTHONPATH):
the ClientApp our bundle names, ``client_node.relay:app``, resolves to `stock_clientapp`.

The coordinator accepts no bundle that ships code, and a Lepton node never loads one, so
the stock path cannot get its ClientApp from the bundle. Instead every process of a stock
node (`flower-supernode`, `flower-superexec`, each `flwr-clientapp`) finds the bench's module
under the relay's name. What Flower does per message is unchanged: spawn `flwr-clientapp`,
pull the task, install the bundle, import the ClientApp module, call it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_TARGET = "client_node.relay"
_SOURCE = Path(__file__).with_name("stock_clientapp.py")


class _StockRelayFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        return importlib.util.spec_from_file_location(fullname, _SOURCE)


sys.meta_path.insert(0, _StockRelayFinder())
